"""A VectorStore wrapper that keeps the BM25 term statistics in step with every write."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from shardrag.bm25 import EMPTY_MARKER
from shardrag.records import EmbeddedChunk, SparseVector
from shardrag.store.base import VectorStore
from shardrag.store.wrapper import StoreWrapper
from shardrag.term_stats import TermStatsTracker


class TermAccountingStore(StoreWrapper):
    """Records, for each write, the chunks' terms it adds and the stored terms it replaces or removes.

    Counting what is actually stored (read back by id before a write) rather than what the caller says it
    replaces makes the statistics exact under replays: upserting the same chunk twice adds it once. Each write's
    delta is applied to the persisted table straight after the write, so that a worker that dies between two
    calls (a crash, a Lambda timeout) leaves the tables exact: a retry then reads back what the dead worker
    wrote and counts only the difference. (A worker killed inside one call, between the shard's write and the
    table's update, loses that call's delta; ``shardrag rebuild-term-stats`` recounts.)
    """

    def __init__(self, inner: VectorStore, *, shard: int, tracker: TermStatsTracker, per_tenant: bool = False) -> None:
        """``per_tenant``: keep one table per tenant (multi-tenant mode), so that no tenant's documents change
        another tenant's BM25 scores."""
        super().__init__(inner)
        self._shard = shard
        self._tracker = tracker
        self._per_tenant = per_tenant

    def _scope(self, tenant: str) -> str:
        return tenant if self._per_tenant else ""

    def upsert(self, chunks: Sequence[EmbeddedChunk]) -> int:
        replaced = self._inner.stored_terms([c.chunk.chunk_id for c in chunks])
        written = self._inner.upsert(chunks)
        added: dict[str, list[SparseVector]] = defaultdict(list)
        removed: dict[str, list[SparseVector]] = defaultdict(list)
        for c in chunks:
            added[self._scope(c.chunk.tenant)].append(c.sparse or EMPTY_MARKER)
        for old in replaced.values():
            removed[self._scope(old.tenant)].append(old.sparse)
        for scope in added.keys() | removed.keys():
            self._tracker.record(self._shard, added=added[scope], removed=removed[scope], tenant=scope)
        self._tracker.flush(self._shard)
        return written

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        stored = self._inner.stored_terms(chunk_ids)
        deleted = self._inner.delete_chunks(list(stored))
        removed: dict[str, list[SparseVector]] = defaultdict(list)
        for old in stored.values():
            removed[self._scope(old.tenant)].append(old.sparse)
        for scope, vectors in removed.items():
            self._tracker.record(self._shard, added=[], removed=vectors, tenant=scope)
        self._tracker.flush(self._shard)
        return deleted

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        return self.delete_chunks(self._inner.chunk_ids(doc_id, keep_version=keep_version))

    def flush(self) -> None:
        self._inner.flush()
        self._tracker.flush(self._shard)
