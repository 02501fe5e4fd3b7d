"""An exact in-memory VectorStore: the reference the Milvus store is contract-tested against, and a fast
stand-in for unit tests of the stages around it."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from shardrag.records import MAX_HIT_TEXT_CHARS, Chunk, EmbeddedChunk, Hit, SearchRequest


class InMemoryVectorStore:
    """Brute-force cosine search over unit-normalised vectors. Filters are not supported (``filter_expr``
    must be empty) because evaluating Milvus expressions is Milvus's job."""

    def __init__(self, *, shard: int = 0, dimension: int = 384) -> None:
        self._shard = shard
        self._dimension = dimension
        self._rows: dict[str, tuple[Chunk, np.ndarray]] = {}
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
        return len(chunks)

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        self._check()
        with self._lock:
            for chunk_id in chunk_ids:
                self._rows.pop(chunk_id, None)
        return len(chunk_ids)

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        stale = [
            cid
            for cid, (chunk, _) in list(self._rows.items())
            if chunk.doc_id == doc_id and (keep_version is None or chunk.version != keep_version)
        ]
        return self.delete_chunks(stale)

    def chunk_ids(self, doc_id: str) -> list[str]:
        self._check()
        return [cid for cid, (chunk, _) in list(self._rows.items()) if chunk.doc_id == doc_id]

    def search(self, request: SearchRequest) -> list[Hit]:
        self._check()
        if request.filter_expr:
            raise NotImplementedError("InMemoryVectorStore does not evaluate filter expressions")
        with self._lock:
            rows = list(self._rows.values())
        if not rows:
            return []
        query = np.asarray(request.vector, dtype=np.float32)
        query /= float(np.linalg.norm(query)) or 1.0
        scores = np.stack([vector for _, vector in rows]) @ query
        order = np.argsort(-scores, kind="stable")[: request.top_k]
        return [
            Hit(
                chunk_id=rows[i][0].chunk_id,
                doc_id=rows[i][0].doc_id,
                score=float(scores[i]),
                text=rows[i][0].text[:MAX_HIT_TEXT_CHARS],
                source=rows[i][0].source,
                title=rows[i][0].title,
                position=rows[i][0].position,
                shard=self._shard,
                metadata=rows[i][0].metadata,
            )
            for i in order
        ]

    def flush(self) -> None:
        self._check()

    def count(self) -> int:
        self._check()
        return len(self._rows)

    def close(self) -> None:
        pass
