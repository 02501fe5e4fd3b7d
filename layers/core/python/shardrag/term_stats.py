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

A delta that cannot be applied (the artefact store fails, or the swap stays contended) must not live only in the
memory of the worker that holds it: the rows it counts are already in the shard, so a retry after that worker
dies would read them back as stored and count nothing. The tracker therefore copies such a delta, under a fresh
id, into a :class:`DeltaJournal` (the registry table when deployed: another service than the artefact store), and
whichever of the worker or a later flush in any process applies it first records the id in the table, so that it
lands exactly once.

In multi-tenant mode every tenant has its own tables (``scope``: the tenant; "" for one table for all), so
one tenant's uploads never move another tenant's IDF, and with it its scores.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from shardrag.artifacts import ArtifactStore
from shardrag.bm25 import EMPTY_MARKER, CorpusStats
from shardrag.records import SparseVector
from shardrag.store.base import VectorStore

logger = logging.getLogger(__name__)

#: 2 adds the units' total length (and how many units it counts) for a measured ``avgdl``; a format-1 table
#: reads as one without lengths, whose chunks then count for nothing in the mean until a rebuild recounts them.
#: 3 adds the ids of journaled deltas already applied (see :class:`DeltaJournal`).
_FORMAT = 3
_READABLE_FORMATS = (1, 2, 3)
#: Compare-and-swap attempts before a flush gives up (the delta stays pending for the next flush), and the
#: longest pause between two of them: at most ~4 s of waiting in all, small beside a Lambda timeout.
_ATTEMPTS = 12
_MAX_PAUSE_S = 0.5
#: How long a table remembers the id of a journaled delta it applied. A journal entry is folded within a minute
#: of any later flush; one older than this is dropped unapplied (with an error), since its id may be forgotten.
APPLIED_KEEP_S = 7 * 24 * 3600
#: Ids of plain (not journaled) writes a table keeps: they matter only while their own writer retries.
_RECENT_WRITES = 64
_WRITE_PREFIX = "w"


def new_write_id() -> str:
    """An id for one plain write (see :meth:`TermStatsStore.apply`)."""
    return f"{_WRITE_PREFIX}{uuid.uuid4().hex[:16]}"


def _durable(entry_id: str) -> str:
    """How a journaled delta's id is kept in a table: without the plain-write prefix, so that it is kept for
    ``APPLIED_KEEP_S`` rather than among the newest plain writes."""
    return entry_id.removeprefix(_WRITE_PREFIX)


def _remember(applied: Mapping[str, int], tag: str) -> dict[str, int]:
    """``applied`` with ``tag`` added: journal ids for ``APPLIED_KEEP_S``, plain write ids the newest few (in the
    order they were added, which the table keeps: many land within one second)."""
    now = int(time.time())
    writes = [k for k in applied if k.startswith(_WRITE_PREFIX)][-(_RECENT_WRITES - 1) :]
    kept = {k: t for k, t in applied.items() if not k.startswith(_WRITE_PREFIX) and now - t < APPLIED_KEEP_S}
    kept.update({k: applied[k] for k in writes})
    kept[tag] = now
    return kept


def encode_stats(stats: CorpusStats, applied: Mapping[str, int] | None = None) -> bytes:
    """A table (or a journaled delta) as bytes; ``applied``: journal ids already counted, with when (epoch s)."""
    ids = np.fromiter(sorted(stats.df), dtype=np.uint32, count=len(stats.df))
    counts = np.fromiter((stats.df[int(i)] for i in ids), dtype=np.int64, count=len(ids))
    done = list((applied or {}).items())  # in the order added (see _remember)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        format=np.int64(_FORMAT),
        documents=np.int64(stats.documents),
        tokens=np.int64(stats.tokens),
        measured=np.int64(stats.measured),
        ids=ids,
        counts=counts,
        applied=np.array([k for k, _ in done], dtype="<U40"),
        applied_at=np.array([t for _, t in done], dtype=np.int64),
    )
    return buffer.getvalue()


def decode_stats(data: bytes) -> CorpusStats:
    return _decode_table(data)[0]


def _decode_table(data: bytes) -> tuple[CorpusStats, dict[str, int]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        version = int(archive["format"])
        if version not in _READABLE_FORMATS:
            raise ValueError(f"term statistics format {version} is not one of {_READABLE_FORMATS}")
        ids = archive["ids"].tolist()
        counts = archive["counts"].tolist()
        lengths = {"tokens": int(archive["tokens"]), "measured": int(archive["measured"])} if version >= 2 else {}
        applied = (
            dict(zip(archive["applied"].tolist(), archive["applied_at"].tolist(), strict=True)) if version >= 3 else {}
        )
        return CorpusStats(int(archive["documents"]), dict(zip(ids, counts, strict=True)), **lengths), applied


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

    def apply(
        self,
        shard: int,
        delta: CorpusStats,
        scope: str = "",
        *,
        entry_id: str | None = None,
        write_id: str | None = None,
    ) -> bool:
        """Add ``delta`` to the shard's table; ``False`` if every attempt lost a race. ``entry_id``: the delta's
        journal id, recorded in the table for ``APPLIED_KEEP_S`` so that a second copy of it adds nothing.

        A plain write gets an id too (``write_id``, else a fresh one): a conditional write whose response was
        lost and that the SDK retried lands once and then reads as a lost race, and the next attempt must find it
        there rather than add it again (the table keeps the last ``_RECENT_WRITES`` such ids). A journal entry
        keeps its failed attempt's write id, so it is looked for under both."""
        if entry_id is not None:
            seen, record = {entry_id, _durable(entry_id)}, _durable(entry_id)
        else:
            record = write_id or new_write_id()
            seen = {record}

        def added(stats: CorpusStats, applied: dict[str, int]) -> tuple[CorpusStats, dict[str, int]] | None:
            if seen & applied.keys():
                return None
            stats.add(delta, clamp=False)
            return stats, _remember(applied, record)

        return self._swap(shard, scope, added)

    def replace(self, shard: int, stats: CorpusStats, scope: str = "") -> None:
        """Overwrite a shard's table (a rebuild from the store's own rows)."""
        if not self._swap(shard, scope, lambda _, applied: (stats, applied)):
            raise RuntimeError(f"shard {shard}: term statistics stayed contended; pause ingestion and rebuild again")

    def _swap(
        self,
        shard: int,
        scope: str,
        change: Callable[[CorpusStats, dict[str, int]], tuple[CorpusStats, dict[str, int]] | None],
    ) -> bool:
        """Compare-and-swap the shard's table through ``change`` (``None``: nothing to write), retrying with
        jitter when a writer races us."""
        name = scoped_name(self._names[shard], scope)
        for attempt in range(_ATTEMPTS):
            if attempt:
                # Jitter (not security) between attempts, never after the last one.
                time.sleep(random.uniform(0, min(_MAX_PAUSE_S, 0.05 * 2 ** (attempt - 1))))
            found = self._artifacts.get(name)
            changed = change(*(_decode_table(found.data) if found else (CorpusStats(), {})))
            if changed is None:
                return True
            if self._artifacts.put(name, encode_stats(*changed), expected_etag=found.etag if found else None):
                return True
        return False


@dataclass(frozen=True)
class JournalEntry:
    """A delta a flush could not apply: ``entry_id`` makes applying it idempotent."""

    entry_id: str
    shard: int
    scope: str
    delta: CorpusStats
    #: When it was journaled (epoch seconds).
    written_at: float


class DeltaJournal(Protocol):
    """Durable copies of the deltas a flush could not apply, kept outside the artefact store."""

    def put(self, entry: JournalEntry) -> None: ...

    def entries(self) -> list[JournalEntry]: ...

    def remove(self, entry_id: str) -> None: ...


class TermStatsTracker:
    """Collects each shard's pending delta from writes and applies it on :meth:`flush`; a delta that cannot be
    applied is kept under an id and journaled (``journal``), and the journal is folded into the tables at the
    first flush and then at most every ``fold_every_s`` (the entries that dead workers left)."""

    def __init__(
        self,
        store: Callable[[], TermStatsStore],
        journal: Callable[[], DeltaJournal | None] = lambda: None,
        *,
        fold_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Factories: the artefact store (an S3 client when deployed) and the journal are built on first use.
        self._store = store
        self._journal = journal
        self._fold_every_s = fold_every_s
        self._clock = clock
        self._folded_at: float | None = None
        self._pending: dict[tuple[int, str], CorpusStats] = {}
        #: Deltas that failed to apply, each under its journal id (whether or not journaling it succeeded).
        self._kept: dict[str, JournalEntry] = {}
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

    def flush(self, shard: int) -> None:
        """Apply the shard's pending deltas (every tenant's) and any kept ones; raise if one could not be applied
        (it is kept, and journaled, for a later flush)."""
        with self._lock:
            fresh = {key: self._pending.pop(key) for key in [k for k in self._pending if k[0] == shard]}
            kept = [entry for entry in self._kept.values() if entry.shard == shard]
        failures: list[str] = []
        for (_, scope), delta in fresh.items():
            if not delta:
                continue
            # The journal entry keeps the failed attempt's id: an attempt that failed after its write landed is
            # then found in the table, not added again (while the table still keeps plain write ids).
            tag = new_write_id()
            error = self._try_apply(shard, scope, delta, write_id=tag)
            if error is not None:
                self._keep(JournalEntry(tag, shard, scope, delta, time.time()))
                failures.append(error)
        for entry in kept:
            if self._try_apply(shard, entry.scope, entry.delta, entry_id=entry.entry_id) is None:
                self._forget(entry.entry_id)
        if self._fold_due():
            self.fold()
        if failures:
            raise RuntimeError(f"shard {shard}: term statistics not applied ({'; '.join(failures)}); kept pending")

    def fold(self) -> int:
        """Apply every journaled delta not held by this tracker (workers that died holding one); returns how many
        were applied or found applied. A failure leaves the entry for a later fold."""
        journal = self._journal()
        self._folded_at = self._clock()
        if journal is None:
            return 0
        try:
            entries = journal.entries()
        except Exception:
            logger.exception("term statistics journal: listing failed; folding later")
            return 0
        folded = 0
        for entry in entries:
            with self._lock:
                ours = entry.entry_id in self._kept
            if ours:
                continue  # this tracker applies it at the shard's next flush
            if time.time() - entry.written_at >= APPLIED_KEEP_S:
                logger.error(
                    "term statistics journal: entry %s is too old to apply once; run rebuild-term-stats", entry.entry_id
                )
            elif self._try_apply(entry.shard, entry.scope, entry.delta, entry_id=entry.entry_id) is not None:
                continue
            try:
                journal.remove(entry.entry_id)
                folded += 1
            except Exception:
                logger.exception("term statistics journal: removing %s failed", entry.entry_id)
        return folded

    def _fold_due(self) -> bool:
        return self._folded_at is None or self._clock() - self._folded_at >= self._fold_every_s

    def _try_apply(
        self, shard: int, scope: str, delta: CorpusStats, *, entry_id: str | None = None, write_id: str | None = None
    ) -> str | None:
        """Apply one delta; the reason it failed, or ``None``."""
        try:
            if self._store().apply(shard, delta, scope, entry_id=entry_id, write_id=write_id):
                return None
            return f"{scope or 'all tenants'}: stayed contended"
        except Exception as exc:
            return f"{scope or 'all tenants'}: {type(exc).__name__}: {exc}"

    def _keep(self, entry: JournalEntry) -> None:
        """Hold the entry for the next flush and journal it, so that it outlives this process."""
        with self._lock:
            self._kept[entry.entry_id] = entry
        try:
            journal = self._journal()
            if journal is not None:
                journal.put(entry)
        except Exception:
            # Kept in memory only: lost if this process dies before the shard's next flush (README, "Integrity").
            logger.exception("term statistics journal: writing %s failed", entry.entry_id)

    def _forget(self, entry_id: str) -> None:
        with self._lock:
            self._kept.pop(entry_id, None)
        try:
            journal = self._journal()
            if journal is not None:
                journal.remove(entry_id)
        except Exception:
            # Applied already (its id is in the table): a later fold finds it applied and removes it.
            logger.exception("term statistics journal: removing %s failed", entry_id)


class CorpusStatsCache:
    """The summed statistics for query-time IDF, re-read at most every ``ttl_s`` seconds, and sooner when a query
    names a term they do not know: then at most every ``unknown_refresh_s``, and never more often than keeps the
    re-reads under a tenth of the time (``REREAD_SHARE``: an interval of ten times the last read's duration).

    Within the TTL, a term that a document just added would otherwise stay unsearchable lexically for up to
    ``ttl_s`` (the query side drops terms with no document frequency): a new name is exactly what someone asks
    about right after uploading it. Known terms only shift in weight, which the TTL bounds well enough. The
    bound by cost lets a cheap read come often (local files: 14 ms p50 for SciFact's tables), so an upload is
    searchable within a quarter second, while a read that takes 100 ms comes at most once a second, however many
    queries ask for words nobody uploaded.
    """

    #: The largest share of its time a query process spends re-reading the tables for unknown terms.
    REREAD_SHARE = 0.1

    def __init__(
        self, load: Callable[[], CorpusStats], *, ttl_s: float = 30.0, unknown_refresh_s: float = 0.25
    ) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._unknown_refresh_s = unknown_refresh_s
        self._stats: CorpusStats | None = None
        self._loaded_at = 0.0
        #: How long the last read took (``monotonic`` seconds).
        self._load_s = 0.0
        self._lock = threading.Lock()

    def get(self, terms: Iterable[int] = ()) -> CorpusStats:
        """The statistics; ``terms``: the query's term ids (one the statistics lack may trigger a re-read)."""
        now = time.monotonic()
        if self._stale(now, terms):
            with self._lock:
                if self._stale(now, terms):
                    self._stats = self._load()
                    self._loaded_at = now
                    self._load_s = max(0.0, time.monotonic() - now)
        assert self._stats is not None
        return self._stats

    def _stale(self, now: float, terms: Iterable[int]) -> bool:
        if self._stats is None or now - self._loaded_at > self._ttl_s:
            return True
        if now - self._loaded_at <= max(self._unknown_refresh_s, self._load_s / self.REREAD_SHARE):
            return False
        return any(term not in self._stats.df for term in terms)

    def invalidate(self) -> None:
        with self._lock:
            self._stats = None


def rebuild_term_stats(
    stores: Callable[[int], VectorStore],
    stats: TermStatsStore,
    *,
    batch_size: int = 1000,
    per_tenant: bool = False,
    journal: DeltaJournal | None = None,
) -> dict[int, int]:
    """Recount every shard's table from the rows the shard actually stores, and replace it.

    The recovery path when a table drifted from its shard: a worker that died between a write and its flush
    loses that delta, and an index copied in from elsewhere comes without tables. Run it with ingestion paused
    (a delta applied while a shard is being recounted would be counted twice or not at all). Returns the
    chunks counted per shard. ``per_tenant``: one table per tenant found in the shard (a tenant with no chunk
    left keeps its last table, which no query can use: a query in its scope matches no chunk). ``journal``:
    its entries count rows the recount sees, so they are dropped first (a crash after that leaves the tables to
    the rebuild that is run again, never counted twice).
    """
    if journal is not None:
        for entry in journal.entries():
            journal.remove(entry.entry_id)
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
