"""An exact in-memory VectorStore: the reference the Milvus store is contract-tested against, and a fast
stand-in for unit tests of the stages around it."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from shardrag.bm25 import EMPTY_MARKER
from shardrag.records import (
    MAX_HIT_TEXT_CHARS,
    Chunk,
    EmbeddedChunk,
    Hit,
    SearchRequest,
    Snapshot,
    SparseVector,
    StoredTerms,
)


class InMemoryVectorStore:
    """Brute-force cosine search over unit-normalised vectors. Filters are not supported (``filter_expr``
    must be empty) because evaluating Milvus expressions is Milvus's job; a snapshot is (``Snapshot.sees``)."""

    def __init__(self, *, shard: int = 0, dimension: int = 384) -> None:
        self._shard = shard
        self._dimension = dimension
        self._rows: dict[str, tuple[Chunk, np.ndarray]] = {}
        self._sparse: dict[str, SparseVector] = {}
        self._lock = threading.Lock()
        self.unavailable = False

    def _check(self) -> None:
        if self.unavailable:
            raise ConnectionError(f"shard {self._shard} is unavailable")

    def ensure_ready(self) -> None:
        self._check()

    def upsert(self, chunks: Sequence[EmbeddedChunk]) -> int:
        self._check()
        with self._lock:
            for item in chunks:
                vector = np.asarray(item.vector, dtype=np.float32)
                if vector.shape != (self._dimension,):
                    raise ValueError(f"vector has shape {vector.shape}, expected ({self._dimension},)")
                norm = float(np.linalg.norm(vector)) or 1.0
                self._rows[item.chunk.chunk_id] = (item.chunk, vector / norm)
                self._sparse[item.chunk.chunk_id] = item.sparse or EMPTY_MARKER
        return len(chunks)

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        self._check()
        with self._lock:
            for chunk_id in chunk_ids:
                self._rows.pop(chunk_id, None)
                self._sparse.pop(chunk_id, None)
        return len(chunk_ids)

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        return self.delete_chunks(self.chunk_ids(doc_id, keep_version=keep_version))

    def chunk_ids(self, doc_id: str, *, keep_version: str | None = None) -> list[str]:
        self._check()
        return [
            cid
            for cid, (chunk, _) in list(self._rows.items())
            if chunk.doc_id == doc_id and (keep_version is None or chunk.version != keep_version)
        ]

    def stored_terms(self, chunk_ids: Sequence[str]) -> dict[str, StoredTerms]:
        self._check()
        with self._lock:
            return {
                cid: StoredTerms(self._rows[cid][0].tenant, self._sparse[cid])
                for cid in chunk_ids
                if cid in self._sparse
            }

    def stored_chunks(self, doc_id: str, *, positions: tuple[int, int] | None = None) -> list[EmbeddedChunk]:
        self._check()
        low, high = positions if positions is not None else (0, 2**31)
        with self._lock:
            return [
                EmbeddedChunk(chunk=chunk, vector=[float(x) for x in vector], sparse=self._sparse[cid])
                for cid, (chunk, vector) in self._rows.items()
                if chunk.doc_id == doc_id and low <= chunk.position <= high
            ]

    def chunks_at(self, spans: Sequence[tuple[str, int, int]], *, snapshot: Snapshot | None = None) -> list[Chunk]:
        self._check()
        with self._lock:
            return [
                chunk
                for chunk, _ in self._rows.values()
                if any(chunk.doc_id == d and low <= chunk.position <= high for d, low, high in spans)
                and _sees(snapshot, chunk)
            ]

    def opening_vectors(self, doc_ids: Sequence[str], *, snapshot: Snapshot | None = None) -> dict[str, list[float]]:
        self._check()
        wanted = set(doc_ids)
        with self._lock:
            return {
                chunk.doc_id: [float(x) for x in vector]
                for chunk, vector in self._rows.values()
                if chunk.doc_id in wanted and chunk.position == 0 and _sees(snapshot, chunk)
            }

    def dense_vectors(self, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        self._check()
        with self._lock:
            return {cid: [float(x) for x in self._rows[cid][1]] for cid in chunk_ids if cid in self._rows}

    def row_epochs(self, doc_id: str) -> dict[str, tuple[int, int]]:
        self._check()
        with self._lock:
            return {
                cid: (chunk.epoch_from, chunk.epoch_to)
                for cid, (chunk, _) in self._rows.items()
                if chunk.doc_id == doc_id
            }

    def retired_at(self, epoch: int) -> list[str]:
        self._check()
        with self._lock:
            return [cid for cid, (chunk, _) in self._rows.items() if epoch and chunk.epoch_to == epoch]

    def retire(self, chunk_ids: Sequence[str], epoch: int) -> int:
        self._check()
        with self._lock:
            found = [cid for cid in chunk_ids if cid in self._rows]
            for cid in found:
                chunk, vector = self._rows[cid]
                self._rows[cid] = (chunk.model_copy(update={"epoch_to": int(epoch)}), vector)
            return len(found)

    def scan(self, batch_size: int = 1000) -> Iterator[list[EmbeddedChunk]]:
        self._check()
        with self._lock:
            rows = [
                EmbeddedChunk(chunk=chunk, vector=[float(x) for x in vector], sparse=self._sparse[cid])
                for cid, (chunk, vector) in self._rows.items()
            ]
        for start in range(0, len(rows), batch_size):
            yield rows[start : start + batch_size]

    def search_lexical(self, request: SearchRequest) -> list[Hit]:
        self._check()
        if request.filter_expr:
            raise NotImplementedError("InMemoryVectorStore does not evaluate filter expressions")
        if request.sparse is None or not request.sparse.indices:
            return []
        query = request.sparse.as_dict()
        with self._lock:
            scored = [
                (sum(query.get(i, 0.0) * v for i, v in zip(vec.indices, vec.values, strict=True)), cid)
                for cid, vec in self._sparse.items()
                if _sees(request.snapshot, self._rows[cid][0])
            ]
            rows = dict(self._rows)
        ranked = sorted(((score, cid) for score, cid in scored if score > 0), key=lambda p: (-p[0], p[1]))
        return [self._hit(rows[cid][0], score) for score, cid in ranked[: request.top_k]]

    def _hit(self, chunk: Chunk, score: float) -> Hit:
        return Hit(
            chunk_id=chunk.chunk_id,
            doc_id=chunk.doc_id,
            score=score,
            text=chunk.text[:MAX_HIT_TEXT_CHARS],
            source=chunk.source,
            title=chunk.title,
            position=chunk.position,
            shard=self._shard,
            metadata=chunk.metadata,
            external_id=chunk.external_id,
        )

    def search(self, request: SearchRequest) -> list[Hit]:
        self._check()
        if request.filter_expr:
            raise NotImplementedError("InMemoryVectorStore does not evaluate filter expressions")
        with self._lock:
            rows = [row for row in self._rows.values() if _sees(request.snapshot, row[0])]
        if not rows:
            return []
        query = np.asarray(request.vector, dtype=np.float32)
        query /= float(np.linalg.norm(query)) or 1.0
        scores = np.stack([vector for _, vector in rows]) @ query
        order = np.argsort(-scores, kind="stable")[: request.top_k]
        return [self._hit(rows[i][0], float(scores[i])) for i in order]

    def flush(self) -> None:
        self._check()

    def count(self) -> int:
        self._check()
        return len(self._rows)

    def close(self) -> None:
        pass


def _sees(snapshot: Snapshot | None, chunk: Chunk) -> bool:
    return snapshot is None or snapshot.sees(chunk.epoch_from, chunk.epoch_to)
