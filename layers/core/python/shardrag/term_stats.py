"""Corpus-wide BM25 statistics: per-shard document frequencies persisted as artefacts, summed for the IDF.

Ingestion records what each write adds and removes (:class:`TermStatsTracker`, one delta per shard) and applies
it when the shard is flushed, with a compare-and-swap so that concurrent ingest workers never lose an update.
The query side (:class:`CorpusStatsCache`) reads every shard's table, sums them and refreshes after ``ttl_s``.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from shardrag.artifacts import ArtifactStore
from shardrag.bm25 import EMPTY_MARKER, CorpusStats
from shardrag.records import SparseVector
from shardrag.store.base import VectorStore

_FORMAT = 1
#: Compare-and-swap attempts before a flush gives up (the delta stays pending for the next flush).
_ATTEMPTS = 12


def encode_stats(stats: CorpusStats) -> bytes:
    ids = np.fromiter(sorted(stats.df), dtype=np.uint32, count=len(stats.df))
    counts = np.fromiter((stats.df[int(i)] for i in ids), dtype=np.int64, count=len(ids))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, format=np.int64(_FORMAT), documents=np.int64(stats.documents), ids=ids, counts=counts)
    return buffer.getvalue()


def decode_stats(data: bytes) -> CorpusStats:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        if int(archive["format"]) != _FORMAT:
            raise ValueError(f"term statistics format {int(archive['format'])} is not {_FORMAT}")
        ids = archive["ids"].tolist()
        counts = archive["counts"].tolist()
        return CorpusStats(int(archive["documents"]), dict(zip(ids, counts, strict=True)))


def stats_name(collection: str, shard: int) -> str:
    """Artefact name: statistics belong to one collection (a new collection starts from zero)."""
    return f"{collection}/bm25/shard-{shard}.npz"


class TermStatsStore:
    """Reads and updates the persisted per-shard tables."""

    def __init__(self, artifacts: ArtifactStore, names: Sequence[str]) -> None:
        self._artifacts = artifacts
        self._names = list(names)

    @property
    def shard_count(self) -> int:
        return len(self._names)

    def load(self, shard: int) -> CorpusStats:
        found = self._artifacts.get(self._names[shard])
        return decode_stats(found.data) if found else CorpusStats()

    def merged(self) -> CorpusStats:
        total = CorpusStats()
        for shard in range(self.shard_count):
            total.add(self.load(shard), clamp=False)
        return total

    def apply(self, shard: int, delta: CorpusStats) -> bool:
        """Add ``delta`` to the shard's table; ``False`` if every attempt lost a race."""

        def added(stats: CorpusStats) -> CorpusStats:
            stats.add(delta)
            return stats

        return self._swap(shard, added)

    def replace(self, shard: int, stats: CorpusStats) -> None:
        """Overwrite a shard's table (a rebuild from the store's own rows)."""
        if not self._swap(shard, lambda _: stats):
            raise RuntimeError(f"shard {shard}: term statistics stayed contended; pause ingestion and rebuild again")

    def _swap(self, shard: int, change: Callable[[CorpusStats], CorpusStats]) -> bool:
        """Compare-and-swap the shard's table through ``change``, retrying with jitter when a writer races us."""
        name = self._names[shard]
        for attempt in range(_ATTEMPTS):
            found = self._artifacts.get(name)
            stats = change(decode_stats(found.data) if found else CorpusStats())
            if self._artifacts.put(name, encode_stats(stats), expected_etag=found.etag if found else None):
                return True
            time.sleep(random.uniform(0, 0.05 * 2**attempt))  # jitter, not security
        return False


class TermStatsTracker:
    """Collects each shard's pending delta from writes and applies it on :meth:`flush`."""

    def __init__(self, store: Callable[[], TermStatsStore]) -> None:
        # A factory: the artefact store (an S3 client when deployed) is built only when a write first flushes.
        self._store = store
        self._pending: dict[int, CorpusStats] = {}
        self._lock = threading.Lock()

    def record(self, shard: int, *, added: Sequence[SparseVector], removed: Sequence[SparseVector]) -> None:
        delta = CorpusStats()
        delta.count(added, +1)
        delta.count(removed, -1)
        with self._lock:
            self._pending.setdefault(shard, CorpusStats()).add(delta, clamp=False)

    def flush(self, shard: int) -> None:
        with self._lock:
            delta = self._pending.pop(shard, None)
        if not delta:
            return
        if not self._store().apply(shard, delta):
            with self._lock:  # keep it for the next flush rather than lose it
                self._pending.setdefault(shard, CorpusStats()).add(delta, clamp=False)
            raise RuntimeError(f"shard {shard}: term statistics stayed contended; the update is kept pending")


class CorpusStatsCache:
    """The summed statistics for query-time IDF, re-read at most every ``ttl_s`` seconds."""

    def __init__(self, load: Callable[[], CorpusStats], *, ttl_s: float = 30.0) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._stats: CorpusStats | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> CorpusStats:
        now = time.monotonic()
        if self._stats is None or now - self._loaded_at > self._ttl_s:
            with self._lock:
                if self._stats is None or now - self._loaded_at > self._ttl_s:
                    self._stats = self._load()
                    self._loaded_at = now
        return self._stats

    def invalidate(self) -> None:
        with self._lock:
            self._stats = None


def rebuild_term_stats(
    stores: Callable[[int], VectorStore], stats: TermStatsStore, *, batch_size: int = 1000
) -> dict[int, int]:
    """Recount every shard's table from the rows the shard actually stores, and replace it.

    The recovery path when a table drifted from its shard: a worker that died between a write and its flush
    loses that delta, and an index copied in from elsewhere comes without tables. Run it with ingestion paused
    (a delta applied while a shard is being recounted would be counted twice or not at all). Returns the
    chunks counted per shard.
    """
    counted: dict[int, int] = {}
    for shard in range(stats.shard_count):
        table = CorpusStats()
        for batch in stores(shard).scan(batch_size):
            table.count([item.sparse or EMPTY_MARKER for item in batch], +1)
        stats.replace(shard, table)
        counted[shard] = table.documents
    return counted
