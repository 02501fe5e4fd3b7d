"""A VectorStore wrapper that keeps the BM25 term statistics in step with every write."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from shardrag.bm25 import EMPTY_MARKER
from shardrag.records import EmbeddedChunk, Hit, SearchRequest, SparseVector
from shardrag.store.base import VectorStore
from shardrag.term_stats import TermStatsTracker


class TermAccountingStore:
    """Records, for each write, the chunks' terms it adds and the stored terms it replaces or removes.

    Counting what is actually stored (read back by id before a write) rather than what the caller says it
    replaces makes the statistics exact under replays: upserting the same chunk twice adds it once. The delta is
    applied to the persisted table on :meth:`flush`, which ingestion calls after each batch.
    """

    def __init__(self, inner: VectorStore, *, shard: int, tracker: TermStatsTracker) -> None:
        self._inner = inner
        self._shard = shard
        self._tracker = tracker

    @property
    def inner(self) -> VectorStore:
        return self._inner

    def ensure_ready(self) -> None:
        self._inner.ensure_ready()

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

    def chunk_ids(self, doc_id: str, *, keep_version: str | None = None) -> list[str]:
        return self._inner.chunk_ids(doc_id, keep_version=keep_version)

    def sparse_vectors(self, chunk_ids: Sequence[str]) -> dict[str, SparseVector]:
        return self._inner.sparse_vectors(chunk_ids)

    def scan(self, batch_size: int = 1000) -> Iterator[list[EmbeddedChunk]]:
        return self._inner.scan(batch_size)

    def search(self, request: SearchRequest) -> list[Hit]:
        return self._inner.search(request)

    def search_lexical(self, request: SearchRequest) -> list[Hit]:
        return self._inner.search_lexical(request)

    def flush(self) -> None:
        self._inner.flush()
        self._tracker.flush(self._shard)

    def count(self) -> int:
        return self._inner.count()

    def close(self) -> None:
        self._inner.close()
