from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import pytest


class HashingEmbedder:
    """A deterministic stand-in for the model in unit tests: bag of hashed words, L2-normalised, so texts that
    share words are close. Real-model behaviour is covered by the integration tier."""

    def __init__(self, dimension: int = 64) -> None:
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                out[row, int.from_bytes(digest, "big") % self._dimension] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())


@pytest.fixture
def hashing_embedder() -> HashingEmbedder:
    return HashingEmbedder()
