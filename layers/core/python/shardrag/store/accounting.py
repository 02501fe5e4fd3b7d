"""A VectorStore wrapper that keeps the BM25 term statistics in step with every write."""

from __future__ import annotations

from collections.abc import Sequence

from shardrag.bm25 import EMPTY_MARKER
from shardrag.records import EmbeddedChunk
from shardrag.store.base import VectorStore
from shardrag.store.wrapper import StoreWrapper
from shardrag.term_stats import TermStatsTracker


class TermAccountingStore(StoreWrapper):
    """Records, for each write, the chunks' terms it adds and the stored terms it replaces or removes.

    Counting what is actually stored (read back by id before a write) rather than what the caller says it
    replaces makes the statistics exact under replays: upserting the same chunk twice adds it once. The delta is
    applied to the persisted table on :meth:`flush`, which ingestion calls after each batch.
    """

    def __init__(self, inner: VectorStore, *, shard: int, tracker: TermStatsTracker) -> None:
        super().__init__(inner)
        self._shard = shard
        self._tracker = tracker

    def upsert(self, chunks: Sequence[EmbeddedChunk]) -> int:
        replaced = self._inner.sparse_vectors([c.chunk.chunk_id for c in chunks])
        written = self._inner.upsert(chunks)
        self._tracker.record(
            self._shard, added=[c.sparse or EMPTY_MARKER for c in chunks], removed=list(replaced.values())
        )
        return written

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        removed = self._inner.sparse_vectors(chunk_ids)
        deleted = self._inner.delete_chunks(list(removed))
        self._tracker.record(self._shard, added=[], removed=list(removed.values()))
        return deleted

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        return self.delete_chunks(self._inner.chunk_ids(doc_id, keep_version=keep_version))

    def flush(self) -> None:
        self._inner.flush()
        self._tracker.flush(self._shard)
