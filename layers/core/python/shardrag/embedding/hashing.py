"""A deterministic test double for :class:`~shardrag.embedding.base.Embedder`, shipped with the library so that
every tier of tests (and anyone testing code built on ShardRAG) can embed without the model."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
from shardrag.embedding.base import Matrix
from shardrag.embedding.stop import stop_point

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Bag of hashed words, L2-normalised: texts that share words are close, and the same text always gets the
    same vector. Retrieval *quality* needs the real model (the integration tier uses it)."""

    def __init__(self, dimension: int = 64) -> None:
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def model_id(self) -> str:
        return f"hashing:{self._dimension}"

    def embed(self, texts: Sequence[str]) -> Matrix:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            stop_point()
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                out[row, int.from_bytes(digest, "big") % self._dimension] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())
