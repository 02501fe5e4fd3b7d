"""The Route stage: which shards a query visits."""

from __future__ import annotations

from typing import Protocol

from shardrag.records import RoutePlan


class Router(Protocol):
    def run(self, vector: list[float]) -> RoutePlan: ...


class HashRouter:
    """Hash placement spreads a document's neighbours over every shard, so every query visits all of them;
    merging each shard's exact top-k then gives the exact global top-k."""

    def __init__(self, shard_count: int) -> None:
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        self._shard_count = shard_count

    def run(self, vector: list[float]) -> RoutePlan:
        del vector  # hash routing does not look at the query
        return RoutePlan(shards=list(range(self._shard_count)), shard_count=self._shard_count)
