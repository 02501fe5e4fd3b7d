"""The VectorStore interface: what a shard can do."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from shardrag.records import Chunk, EmbeddedChunk, Hit, SearchRequest, Snapshot, StoredTerms


@runtime_checkable
class VectorStore(Protocol):
    """One shard's collection of chunks. Implementations: Milvus (Lite or server) and an exact in-memory store."""

    def ensure_ready(self) -> None:
        """Create the collection and index if missing and load it for search (idempotent)."""
        ...

    def upsert(self, chunks: Sequence[EmbeddedChunk]) -> int:
        """Insert or replace chunks by ``chunk_id``; returns how many were written."""
        ...

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        """Delete chunks by id; returns how many ids were asked to be deleted."""
        ...

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        """Delete every chunk of ``doc_id`` (except those of ``keep_version``); returns how many were removed."""
        ...

    def chunk_ids(self, doc_id: str, *, keep_version: str | None = None) -> list[str]:
        """Ids of the chunks stored for ``doc_id`` (except those of ``keep_version``)."""
        ...

    def stored_terms(self, chunk_ids: Sequence[str]) -> dict[str, StoredTerms]:
        """The stored BM25 vectors (with tenants) of those of ``chunk_ids`` that exist (term statistics)."""
        ...

    def stored_chunks(self, doc_id: str, *, positions: tuple[int, int] | None = None) -> list[EmbeddedChunk]:
        """The stored chunks of ``doc_id`` (any version) with their dense vectors, those at ``positions`` (an
        inclusive range) only if given. A chunk whose text or title the store may have cut is left out: its
        vector was not computed from what is stored (re-embedding reuses only what it can verify)."""
        ...

    def chunks_at(self, spans: Sequence[tuple[str, int, int]], *, snapshot: Snapshot | None = None) -> list[Chunk]:
        """The stored chunks (no vectors) of each ``(doc_id, first, last)`` position range, inclusive: what a hit
        may show instead of the row that matched (:mod:`shardrag.passages`); only those ``snapshot`` sees."""
        ...

    def opening_vectors(self, doc_ids: Sequence[str], *, snapshot: Snapshot | None = None) -> dict[str, list[float]]:
        """The dense vector of each of ``doc_ids``' opening chunk (position 0) that ``snapshot`` sees, by document
        id; a document without one here is left out (dense feedback, :mod:`shardrag.feedback`)."""
        ...

    def dense_vectors(self, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        """The dense vector of each of ``chunk_ids`` that is stored, by chunk id (a point read by primary key)."""
        ...

    def row_epochs(self, doc_id: str) -> dict[str, tuple[int, int]]:
        """Each stored row of ``doc_id`` (any version, cut or not) with the epochs that wrote and retired it."""
        ...

    def retired_at(self, epoch: int) -> list[str]:
        """Ids of the rows (any document) stamped retired at ``epoch``."""
        ...

    def retire(self, chunk_ids: Sequence[str], epoch: int) -> int:
        """Stamp those of ``chunk_ids`` that exist as retired at ``epoch`` (0: live again), the rows otherwise as
        stored (``shardrag.visibility``); returns how many were stamped."""
        ...

    def scan(self, batch_size: int = 1000) -> Iterator[list[EmbeddedChunk]]:
        """Every stored chunk with its dense and BM25 vectors, in batches (rebalancing reads the index back)."""
        ...

    def search(self, request: SearchRequest) -> list[Hit]:
        """Top ``request.top_k`` chunks by cosine similarity, best first."""
        ...

    def search_lexical(self, request: SearchRequest) -> list[Hit]:
        """Top ``request.top_k`` chunks by BM25 (inner product with ``request.sparse``), best first."""
        ...

    def flush(self) -> None:
        """Make written data durable and fast to search (seals growing segments on Milvus Lite)."""
        ...

    def count(self) -> int:
        """Number of chunks stored."""
        ...

    def close(self) -> None: ...
