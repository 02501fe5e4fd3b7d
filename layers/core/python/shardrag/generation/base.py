"""The Generator interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from shardrag.records import Answer, Hit


@runtime_checkable
class Generator(Protocol):
    """Writes an answer grounded in the retrieved hits, always with citations."""

    @property
    def name(self) -> str: ...

    def run(self, question: str, hits: Sequence[Hit]) -> Answer: ...


def check_sampling(*, max_tokens: int, temperature: float, timeout_s: float) -> None:
    """The arguments every model-backed generator takes, checked once for all of them."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0.0 <= temperature <= 2.0:
        raise ValueError("temperature must be between 0 and 2")
    if timeout_s <= 0:
        raise ValueError("timeout_s must be positive")
