"""The Route stage: which shards a query visits."""

from __future__ import annotations

import threading
from typing import Protocol

from shardrag.centroids import CentroidRouter
from shardrag.placement import CentroidCache
from shardrag.records import RoutePlan


class Router(Protocol):
    def run(self, vector: list[float], probe: int | None = None) -> RoutePlan: ...


class HashRouter:
    """Hash placement spreads a document's neighbours over every shard, so every query visits all of them;
    merging each shard's exact top-k then gives the exact global top-k."""

    def __init__(self, shard_count: int) -> None:
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        self._shard_count = shard_count

    def run(self, vector: list[float], probe: int | None = None) -> RoutePlan:
        # Hash routing looks at neither the query nor ``probe``: skipping a shard would only lose hits.
        del vector, probe
        return RoutePlan(shards=list(range(self._shard_count)), shard_count=self._shard_count)


class ArtifactCentroidRouter:
    """Centroid routing by the index's centroid artefact, read once per container through ``cache`` (and
    re-checked every ``refresh_s``, so that a rebalance reaches running containers).

    Before the first ingestion there is no artefact and nothing to skip: every shard is searched.
    """

    def __init__(
        self,
        cache: CentroidCache,
        shard_count: int,
        *,
        probe_margin: float,
        max_probe: int,
        default_probe: int | None = None,
    ) -> None:
        self._cache = cache
        self._shard_count = shard_count
        self._probe_margin = probe_margin
        self._max_probe = max_probe
        self._default_probe = default_probe
        self._router: CentroidRouter | None = None
        self._version = ""
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        self._cache.get()

    def run(self, vector: list[float], probe: int | None = None) -> RoutePlan:
        centroids = self._cache.get()
        if centroids is None:
            return RoutePlan(shards=list(range(self._shard_count)), shard_count=self._shard_count)
        with self._lock:
            if self._router is None or self._version != centroids.version:
                self._router = CentroidRouter(
                    centroids,
                    probe_margin=self._probe_margin,
                    max_probe=self._max_probe,
                    default_probe=self._default_probe,
                )
                self._version = centroids.version
            router = self._router
        return router.run(vector, probe)
