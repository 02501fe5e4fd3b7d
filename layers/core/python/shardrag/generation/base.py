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
