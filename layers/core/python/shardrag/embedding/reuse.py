"""Embedding reuse: a vector computed once for a text is not computed again.

A re-uploaded document mostly repeats itself: the chunks an edit did not touch have the same text as before,
and their vectors are already in the index. :class:`VectorPool` holds such vectors keyed by what determines
them: the model, the dimension and the exact text the model embeds (title prefix included), under a strong
hash (BLAKE2b, 256 bits: a collision would silently give a chunk another text's vector, so no short digest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

import numpy as np
from shardrag.embedding.base import Embedder, Matrix


def text_key(model_id: str, dimension: int, text: str) -> bytes:
    """The key of ``text``'s vector under ``model_id`` at ``dimension`` (unambiguous whatever the parts hold)."""
    encoded = json.dumps([model_id, dimension, text], ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(encoded, digest_size=32).digest()


class VectorPool:
    """Vectors already computed for texts by one model, looked up by :func:`text_key`."""

    def __init__(self, model_id: str, dimension: int) -> None:
        if not model_id:
            raise ValueError("a vector pool needs the model's id: vectors of unknown provenance are never reused")
        self.model_id = model_id
        self.dimension = dimension
        # float32 arrays, not lists of Python floats: a part of a large object can pool thousands of vectors.
        # Exact either way: the vectors were float32 when they were stored.
        self._vectors: dict[bytes, Matrix] = {}

    def __len__(self) -> int:
        return len(self._vectors)

    def add(self, text: str, vector: Sequence[float]) -> None:
        if len(vector) == self.dimension:
            self._vectors[text_key(self.model_id, self.dimension, text)] = np.asarray(vector, dtype=np.float32)

    def get(self, text: str) -> Matrix | None:
        return self._vectors.get(text_key(self.model_id, self.dimension, text))


class EmbedResult:
    """The vectors of a batch of texts, and which of them the model actually computed."""

    def __init__(self, vectors: Matrix, computed: Sequence[bool]) -> None:
        self.vectors = vectors
        #: Per text: ``True`` if the model embedded it, ``False`` if a pool held its vector.
        self.computed = list(computed)

    @property
    def embedded(self) -> int:
        return sum(self.computed)

    @property
    def reused(self) -> int:
        return len(self.computed) - self.embedded


def embed_reusing(embedder: Embedder, texts: Sequence[str], pools: Iterable[VectorPool]) -> EmbedResult:
    """``texts`` embedded, taking each vector a pool holds and running the model on the others only (in one
    call, so that the embedder still batches them by length)."""
    out = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    found = list(pools)
    missing: list[int] = []
    for row, text in enumerate(texts):
        vector = next((v for pool in found if (v := pool.get(text)) is not None), None)
        if vector is None:
            missing.append(row)
        else:
            out[row] = np.asarray(vector, dtype=np.float32)
    if missing:
        out[missing] = embedder.embed([texts[i] for i in missing])
    computed = [False] * len(texts)
    for row in missing:
        computed[row] = True
    return EmbedResult(out, computed)
