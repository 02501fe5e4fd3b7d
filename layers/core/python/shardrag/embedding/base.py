"""The Embedder interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns text into L2-normalised vectors (cosine similarity == inner product)."""

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Matrix:
        """Embed a batch; returns a ``(len(texts), dimension)`` float32 matrix of unit vectors."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for ``text`` (before truncation), for chunking and prompt budgets."""
        ...
