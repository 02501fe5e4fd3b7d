"""The ShardSearch stage."""

from __future__ import annotations

import time
from collections.abc import Callable

from shardrag.errors import BadRequest, ShardSearchFailed, WiringError
from shardrag.records import SearchRequest, ShardResult
from shardrag.store.base import VectorStore


class ShardSearcher:
    """Searches one shard. ``store_for(shard)`` returns that shard's store (cached by the caller's factory)."""

    def __init__(self, store_for: Callable[[int], VectorStore], shard_count: int) -> None:
        self._store_for = store_for
        self._shard_count = shard_count

    def run(self, shard: int, request: SearchRequest, *, dense: bool = True, lexical: bool = False) -> ShardResult:
        """Search the shard's dense and/or BM25 index with the same filter and depth."""
        if not 0 <= shard < self._shard_count:
            raise WiringError(f"shard {shard} is out of range 0..{self._shard_count - 1}")
        started = time.perf_counter()
        store = self._store_for(shard)
        try:
            dense_hits = store.search(request) if dense else []
            lexical_hits = store.search_lexical(request) if lexical else []
        except BadRequest:
            raise
        except Exception as exc:  # any store failure is this shard's failure, reported by name
            raise ShardSearchFailed(f"shard {shard}: {type(exc).__name__}: {exc}") from exc
        took_ms = (time.perf_counter() - started) * 1000
        return ShardResult(shard=shard, status="ok", hits=dense_hits, lexical=lexical_hits, took_ms=round(took_ms, 3))
