"""Corpus-wide BM25 statistics: per-shard document frequencies and lengths of the lexical units (a document, or
a run of its chunks: :mod:`shardrag.lexical_units`) persisted as artefacts, summed for the IDF and the mean unit
length (``avgdl``). Each unit is counted by one stored row (:func:`shardrag.bm25.counts_unit`).

Ingestion records what each write adds and removes (:class:`TermStatsTracker`, one delta per shard) and applies
it when the shard is flushed, with a compare-and-swap so that concurrent ingest workers never lose an update.
The query side (:class:`CorpusStatsCache`) reads every shard's table, sums them and refreshes after ``ttl_s``.

Deltas commute: a table is the plain sum of every delta applied to it, so two workers' flushes may land in
either order. That is why stored counts are never clamped at zero: a removal applied before the addition it
undoes goes negative for a moment and comes back exactly, where a clamp would have made it drift for good.
Only the reader (:meth:`~shardrag.bm25.CorpusStats.readable`) hides a moment's negative count.

In multi-tenant mode every tenant has its own tables (``scope``: the tenant; "" for one table for all), so
one tenant's uploads never move another tenant's IDF, and with it its scores.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from shardrag.artifacts import ArtifactStore
from shardrag.bm25 import EMPTY_MARKER, CorpusStats
from shardrag.records import SparseVector
from shardrag.store.base import VectorStore

#: 2 adds the units' total length (and how many units it counts) for a measured ``avgdl``; a format-1 table
#: reads as one without lengths, whose chunks then count for nothing in the mean until a rebuild recounts them.
_FORMAT = 2
_READABLE_FORMATS = (1, 2)
#: Compare-and-swap attempts before a flush gives up (the delta stays pending for the next flush), and the
#: longest pause between two of them: at most ~4 s of waiting in all, small beside a Lambda timeout.
_ATTEMPTS = 12
_MAX_PAUSE_S = 0.5


def encode_stats(stats: CorpusStats) -> bytes:
    ids = np.fromiter(sorted(stats.df), dtype=np.uint32, count=len(stats.df))
    counts = np.fromiter((stats.df[int(i)] for i in ids), dtype=np.int64, count=len(ids))
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        format=np.int64(_FORMAT),
        documents=np.int64(stats.documents),
        tokens=np.int64(stats.tokens),
        measured=np.int64(stats.measured),
        ids=ids,
        counts=counts,
    )
    return buffer.getvalue()


def decode_stats(data: bytes) -> CorpusStats:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        version = int(archive["format"])
        if version not in _READABLE_FORMATS:
            raise ValueError(f"term statistics format {version} is not one of {_READABLE_FORMATS}")
        ids = archive["ids"].tolist()
        counts = archive["counts"].tolist()
        lengths = {"tokens": int(archive["tokens"]), "measured": int(archive["measured"])} if version >= 2 else {}
        return CorpusStats(int(archive["documents"]), dict(zip(ids, counts, strict=True)), **lengths)


def stats_name(collection: str, shard: int) -> str:
    """Artefact name: statistics belong to one collection (a new collection starts from zero)."""
    return f"{collection}/bm25/shard-{shard}.npz"


def scoped_name(name: str, scope: str) -> str:
    """``name`` for one tenant's table (``scope`` "": the table for all)."""
    if not scope:
        return name
    head, _, tail = name.rpartition("/")
    return f"{head}/tenants/{scope}/{tail}" if head else f"tenants/{scope}/{tail}"


class TermStatsStore:
    """Reads and updates the persisted per-shard tables."""

    def __init__(self, artifacts: ArtifactStore, names: Sequence[str]) -> None:
        self._artifacts = artifacts
        self._names = list(names)

    @property
    def shard_count(self) -> int:
        return len(self._names)

    def load(self, shard: int, scope: str = "") -> CorpusStats:
        """The shard's table as stored (a count may be negative for a moment: see the module docstring)."""
        found = self._artifacts.get(scoped_name(self._names[shard], scope))
        return decode_stats(found.data) if found else CorpusStats()

    def merged(self, scope: str = "") -> CorpusStats:
        """Every shard's table summed, as the query side uses it."""
        total = CorpusStats()
        for shard in range(self.shard_count):
            total.add(self.load(shard, scope), clamp=False)
        return total.readable()

    def apply(self, shard: int, delta: CorpusStats, scope: str = "") -> bool:
        """Add ``delta`` to the shard's table; ``False`` if every attempt lost a race."""

        def added(stats: CorpusStats) -> CorpusStats:
            stats.add(delta, clamp=False)
            return stats

        return self._swap(shard, scope, added)

    def replace(self, shard: int, stats: CorpusStats, scope: str = "") -> None:
        """Overwrite a shard's table (a rebuild from the store's own rows)."""
        if not self._swap(shard, scope, lambda _: stats):
            raise RuntimeError(f"shard {shard}: term statistics stayed contended; pause ingestion and rebuild again")

    def _swap(self, shard: int, scope: str, change: Callable[[CorpusStats], CorpusStats]) -> bool:
        """Compare-and-swap the shard's table through ``change``, retrying with jitter when a writer races us."""
        name = scoped_name(self._names[shard], scope)
        for attempt in range(_ATTEMPTS):
            if attempt:
                # Jitter (not security) between attempts, never after the last one.
                time.sleep(random.uniform(0, min(_MAX_PAUSE_S, 0.05 * 2 ** (attempt - 1))))
            found = self._artifacts.get(name)
            stats = change(decode_stats(found.data) if found else CorpusStats())
            if self._artifacts.put(name, encode_stats(stats), expected_etag=found.etag if found else None):
                return True
        return False


class TermStatsTracker:
    """Collects each shard's pending delta from writes and applies it on :meth:`flush`."""

    def __init__(self, store: Callable[[], TermStatsStore]) -> None:
        # A factory: the artefact store (an S3 client when deployed) is built only when a write first flushes.
        self._store = store
        self._pending: dict[tuple[int, str], CorpusStats] = {}
        self._lock = threading.Lock()

    def record(
        self, shard: int, *, added: Sequence[SparseVector], removed: Sequence[SparseVector], tenant: str = ""
    ) -> None:
        """Count a write on ``shard`` into the table of ``tenant`` ("" : the table for all tenants)."""
        delta = CorpusStats()
        delta.count(added, +1)
        delta.count(removed, -1)
        with self._lock:
            self._pending.setdefault((shard, tenant), CorpusStats()).add(delta, clamp=False)

    def _keep(self, deltas: dict[tuple[int, str], CorpusStats]) -> None:
        """Put deltas back for the next flush rather than lose them."""
        with self._lock:
            for key, delta in deltas.items():
                self._pending.setdefault(key, CorpusStats()).add(delta, clamp=False)

    def flush(self, shard: int) -> None:
        """Apply the shard's pending deltas (every tenant's); a delta that cannot be applied stays pending."""
        with self._lock:
            keys = [key for key in self._pending if key[0] == shard]
            deltas = {key: self._pending.pop(key) for key in keys}
        lost: list[str] = []
        for index, ((_, scope), delta) in enumerate(deltas.items()):
            try:
                applied = not delta or self._store().apply(shard, delta, scope)
            except BaseException:
                # The artefact store failed: keep this delta and those not yet tried for the next flush.
                self._keep({k: d for k, d in list(deltas.items())[index:]})
                raise
            if not applied:
                self._keep({(shard, scope): delta})
                lost.append(scope or "all tenants")
        if lost:
            raise RuntimeError(f"shard {shard}: term statistics ({', '.join(lost)}) stayed contended; kept pending")


class CorpusStatsCache:
    """The summed statistics for query-time IDF, re-read at most every ``ttl_s`` seconds, and sooner (at most
    every ``unknown_refresh_s``) when a query names a term they do not know.

    Within the TTL, a term that a document just added would otherwise stay unsearchable lexically for up to
    ``ttl_s`` (the query side drops terms with no document frequency): a new name is exactly what someone asks
    about right after uploading it. Known terms only shift in weight, which the TTL bounds well enough.
    """

    def __init__(self, load: Callable[[], CorpusStats], *, ttl_s: float = 30.0, unknown_refresh_s: float = 1.0) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._unknown_refresh_s = unknown_refresh_s
        self._stats: CorpusStats | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def get(self, terms: Iterable[int] = ()) -> CorpusStats:
        """The statistics; ``terms``: the query's term ids (one the statistics lack may trigger a re-read)."""
        now = time.monotonic()
        if self._stale(now, terms):
            with self._lock:
                if self._stale(now, terms):
                    self._stats = self._load()
                    self._loaded_at = now
        assert self._stats is not None
        return self._stats

    def _stale(self, now: float, terms: Iterable[int]) -> bool:
        if self._stats is None or now - self._loaded_at > self._ttl_s:
            return True
        if now - self._loaded_at <= self._unknown_refresh_s:
            return False
        return any(term not in self._stats.df for term in terms)

    def invalidate(self) -> None:
        with self._lock:
            self._stats = None


def rebuild_term_stats(
    stores: Callable[[int], VectorStore], stats: TermStatsStore, *, batch_size: int = 1000, per_tenant: bool = False
) -> dict[int, int]:
    """Recount every shard's table from the rows the shard actually stores, and replace it.

    The recovery path when a table drifted from its shard: a worker that died between a write and its flush
    loses that delta, and an index copied in from elsewhere comes without tables. Run it with ingestion paused
    (a delta applied while a shard is being recounted would be counted twice or not at all). Returns the
    chunks counted per shard. ``per_tenant``: one table per tenant found in the shard (a tenant with no chunk
    left keeps its last table, which no query can use: a query in its scope matches no chunk).
    """
    counted: dict[int, int] = {}
    for shard in range(stats.shard_count):
        tables: dict[str, CorpusStats] = {"": CorpusStats()} if not per_tenant else {}
        # Rows, not the tables' unit counts: the rows of a lexical unit but one count for nothing.
        counted[shard] = 0
        for batch in stores(shard).scan(batch_size):
            for item in batch:
                scope = item.chunk.tenant if per_tenant else ""
                tables.setdefault(scope, CorpusStats()).count([item.sparse or EMPTY_MARKER], +1)
                counted[shard] += 1
        for scope, table in tables.items():
            stats.replace(shard, table, scope)
    return counted
