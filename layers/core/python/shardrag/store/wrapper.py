"""A base for VectorStore wrappers: every call goes to the wrapped store unless a subclass changes it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from shardrag.records import Chunk, EmbeddedChunk, Hit, SearchRequest, Snapshot, StoredTerms
from shardrag.store.base import VectorStore


class StoreWrapper:
    """Delegates the whole :class:`VectorStore` protocol to ``inner``; subclasses override what they add to."""

    def __init__(self, inner: VectorStore) -> None:
        self._inner = inner

    @property
    def inner(self) -> VectorStore:
        return self._inner

    def ensure_ready(self) -> None:
        self._inner.ensure_ready()

    def upsert(self, chunks: Sequence[EmbeddedChunk]) -> int:
        return self._inner.upsert(chunks)

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        return self._inner.delete_chunks(chunk_ids)

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        return self._inner.delete_document(doc_id, keep_version=keep_version)

    def chunk_ids(self, doc_id: str, *, keep_version: str | None = None) -> list[str]:
        return self._inner.chunk_ids(doc_id, keep_version=keep_version)

    def stored_terms(self, chunk_ids: Sequence[str]) -> dict[str, StoredTerms]:
        return self._inner.stored_terms(chunk_ids)

    def stored_chunks(self, doc_id: str, *, positions: tuple[int, int] | None = None) -> list[EmbeddedChunk]:
        return self._inner.stored_chunks(doc_id, positions=positions)

    def chunks_at(self, spans: Sequence[tuple[str, int, int]], *, snapshot: Snapshot | None = None) -> list[Chunk]:
        return self._inner.chunks_at(spans, snapshot=snapshot)

    def opening_vectors(self, doc_ids: Sequence[str], *, snapshot: Snapshot | None = None) -> dict[str, list[float]]:
        return self._inner.opening_vectors(doc_ids, snapshot=snapshot)

    def dense_vectors(self, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        return self._inner.dense_vectors(chunk_ids)

    def row_epochs(self, doc_id: str) -> dict[str, tuple[int, int]]:
        return self._inner.row_epochs(doc_id)

    def retired_at(self, epoch: int) -> list[str]:
        return self._inner.retired_at(epoch)

    def retire(self, chunk_ids: Sequence[str], epoch: int) -> int:
        return self._inner.retire(chunk_ids, epoch)

    def scan(self, batch_size: int = 1000) -> Iterator[list[EmbeddedChunk]]:
        return self._inner.scan(batch_size)

    def search(self, request: SearchRequest) -> list[Hit]:
        return self._inner.search(request)

    def search_lexical(self, request: SearchRequest) -> list[Hit]:
        return self._inner.search_lexical(request)

    def flush(self) -> None:
        self._inner.flush()

    def count(self) -> int:
        return self._inner.count()

    def close(self) -> None:
        self._inner.close()
