"""``shardrag rebalance``: retrain the routing centroids on a sample of the stored vectors and move every chunk to
the shards the new centroids place it on, answering queries throughout.

The order keeps every chunk findable by whichever centroid set a router holds at any moment:

1. read the index back: which shards hold each chunk, and a seeded reservoir sample of distinct vectors;
2. train the new set on the sample;
3. copy each chunk onto the new shards it is placed on that do not hold it yet (upserts by ``chunk_id``, so a
   chunk present on both old and new shards is deduplicated by id at fusion);
4. record in the registry the union of old and new shards of every document (an overwrite or delete during the
   move reaches both);
5. swap the artefact (compare-and-swap on the version read in 1; a concurrent bootstrap or rebalance makes this
   one stop before it deletes anything);
6. wait ``grace_s`` (the routers' refresh period) so that every container routes by the new set;
7. delete each chunk from the shards it is no longer placed on, and record the new shards in the registry.

Ingestion should be paused during a rebalance (stop the queue's event source): chunks written meanwhile are
placed by whichever set the writer holds and are not moved until the next rebalance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from shardrag.centroids import CentroidSet
from shardrag.config import CentroidSettings
from shardrag.errors import ConfigurationError
from shardrag.ingestion.registry import DynamoDbRegistry
from shardrag.placement import CentroidStore, train_for_shards
from shardrag.records import EmbeddedChunk, Record
from shardrag.store.base import VectorStore

log = logging.getLogger("shardrag.rebalance")

__all__ = ["RebalanceConflict", "RebalanceReport", "Rebalancer"]


class RebalanceConflict(ConfigurationError):
    """The centroid artefact changed while the rebalance ran; nothing was deleted, run it again."""


class RebalanceReport(Record):
    chunks: int
    stored_before: int
    stored_after: int
    copied: int
    removed: int
    documents: int
    previous_version: str
    version: str
    took_s: float


class Rebalancer:
    """Moves the index onto freshly trained centroids (see the module docstring)."""

    def __init__(
        self,
        *,
        stores: Callable[[int], VectorStore],
        shard_count: int,
        centroids: CentroidStore,
        settings: CentroidSettings,
        registry: DynamoDbRegistry | None = None,
        batch_size: int = 1000,
        sleep: Callable[[float], None] = time.sleep,
        on_swap: Callable[[CentroidSet], None] | None = None,
        on_change: Callable[[], object] | None = None,
    ) -> None:
        """``on_swap``: called with the new set right after the artefact swap (the local runtime drops its
        cached set there instead of waiting for the refresh). ``on_change``: called before the first chunk moves
        and after the last (the index version that cached answers are keyed by; ``shardrag.caching``)."""
        self._on_change = on_change
        self._stores = stores
        self._shard_count = shard_count
        self._centroids = centroids
        self._settings = settings
        self._registry = registry
        self._batch_size = batch_size
        self._sleep = sleep
        self._on_swap = on_swap

    def run(self, *, grace_s: float | None = None) -> RebalanceReport:
        started = time.perf_counter()
        current = self._centroids.get()
        previous_version, etag = (current[0].version, current[1]) if current else ("", None)
        holders, docs, sample = self._read_back()
        if not holders:
            raise ConfigurationError("the index is empty: nothing to rebalance (ingestion trains the centroids)")
        fresh = train_for_shards(sample, self._shard_count, self._settings)
        self._changed()
        placed, copied = self._copy(fresh, holders)
        self._record(docs, placed, holders, union=True)
        if not self._centroids.put(fresh, expected_etag=etag):
            raise RebalanceConflict(
                "the centroid artefact changed during the rebalance; every chunk is on its old and new shards, "
                "nothing was deleted: run the rebalance again"
            )
        if self._on_swap is not None:
            self._on_swap(fresh)
        wait = self._settings.refresh_s if grace_s is None else grace_s
        if wait > 0:
            log.info("centroids %s stored; waiting %.0f s for routers to load them", fresh.version, wait)
            self._sleep(wait)
        removed = self._remove(holders, placed)
        documents = self._record(docs, placed, holders, union=False)
        self._changed()
        return RebalanceReport(
            chunks=len(holders),
            stored_before=sum(len(h) for h in holders.values()),
            stored_after=sum(len(p) for p in placed.values()),
            copied=copied,
            removed=removed,
            documents=documents,
            previous_version=previous_version,
            version=fresh.version,
            took_s=round(time.perf_counter() - started, 3),
        )

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _read_back(self) -> tuple[dict[str, set[int]], dict[str, str], np.ndarray]:
        """Holders and document of every chunk, and a reservoir sample of distinct chunk vectors."""
        holders: dict[str, set[int]] = {}
        docs: dict[str, str] = {}
        rng = np.random.default_rng(self._settings.seed)
        cap = self._settings.train_sample
        sample: list[list[float]] = []
        for shard in range(self._shard_count):
            for batch in self._stores(shard).scan(self._batch_size):
                for item in batch:
                    chunk_id = item.chunk.chunk_id
                    if chunk_id in holders:
                        holders[chunk_id].add(shard)
                        continue
                    holders[chunk_id] = {shard}
                    docs[chunk_id] = item.chunk.doc_id
                    seen = len(holders)
                    if len(sample) < cap:
                        sample.append(item.vector)
                    elif (slot := int(rng.integers(seen))) < cap:
                        sample[slot] = item.vector
        return holders, docs, np.asarray(sample, dtype=np.float32)

    def _copy(self, fresh: CentroidSet, holders: dict[str, set[int]]) -> tuple[dict[str, list[int]], int]:
        """Upsert every chunk onto the new shards that lack it; returns each chunk's new shards and the copies."""
        placed: dict[str, list[int]] = {}
        pending: dict[int, list[EmbeddedChunk]] = {}
        copied = 0
        touched: set[int] = set()

        def write(shard: int) -> None:
            nonlocal copied
            items = pending.pop(shard, [])
            if items:
                self._stores(shard).upsert(items)
                copied += len(items)
                touched.add(shard)

        for shard in range(self._shard_count):
            for batch in self._stores(shard).scan(self._batch_size):
                # Chunks copied here earlier in this pass (or held by several shards) are placed once.
                todo = [item for item in batch if item.chunk.chunk_id in holders and item.chunk.chunk_id not in placed]
                if not todo:
                    continue
                targets = fresh.place(
                    np.asarray([item.vector for item in todo], dtype=np.float32),
                    replicate_margin=self._settings.replicate_margin,
                    max_replicas=self._settings.max_replicas,
                )
                for item, shards in zip(todo, targets, strict=True):
                    placed[item.chunk.chunk_id] = shards
                    for target in shards:
                        if target not in holders[item.chunk.chunk_id]:
                            pending.setdefault(target, []).append(item)
                            if len(pending[target]) >= self._batch_size:
                                write(target)
        for shard in list(pending):
            write(shard)
        for shard in sorted(touched):
            self._stores(shard).flush()
        return placed, copied

    def _remove(self, holders: dict[str, set[int]], placed: dict[str, list[int]]) -> int:
        stale: dict[int, list[str]] = {}
        for chunk_id, held in holders.items():
            for shard in held - set(placed[chunk_id]):
                stale.setdefault(shard, []).append(chunk_id)
        removed = 0
        for shard, chunk_ids in sorted(stale.items()):
            store = self._stores(shard)
            for start in range(0, len(chunk_ids), self._batch_size):
                removed += store.delete_chunks(chunk_ids[start : start + self._batch_size])
            store.flush()
        return removed

    def _record(
        self, docs: dict[str, str], placed: dict[str, list[int]], holders: dict[str, set[int]], *, union: bool
    ) -> int:
        """Write each indexed document's shards to the registry (during the move: old and new)."""
        if self._registry is None:
            return 0
        shards_of: dict[str, dict[int, None]] = {}
        for chunk_id, doc_id in docs.items():
            held = shards_of.setdefault(doc_id, {})
            held.update(dict.fromkeys(placed[chunk_id]))
            if union:
                held.update(dict.fromkeys(sorted(holders[chunk_id])))
        states = self._registry.get_documents(shards_of)
        updated = [
            state.model_copy(update={"shard": next(iter(shards_of[doc_id])), "shards": list(shards_of[doc_id])})
            for doc_id, state in states.items()
            if state.status == "indexed"
        ]
        self._registry.put_documents(updated)
        return len(updated)
