"""The ShardSearch stage."""

from __future__ import annotations

import time
from collections.abc import Callable

from shardrag.errors import BadRequest, ShardBusy, ShardSearchFailed, WiringError
from shardrag.records import Hit, SearchRequest, ShardResult
from shardrag.store.base import VectorStore

#: gRPC status names of a reachable server that could not answer in time: saturation, not failure.
_SATURATION_CODES = frozenset({"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


def is_saturation(exc: BaseException) -> bool:
    """Whether a store error means *busy* (a deadline missed, the server's own rate limit) rather than *down*.

    Read from the gRPC status a Milvus client surfaces (``grpc.RpcError.code()``), by name, so that the core does
    not import grpc. A refused or failed connection is not saturation: that shard is down.
    """
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            code = code()
        except TypeError:
            return False
    return getattr(code, "name", None) in _SATURATION_CODES


class ShardSearcher:
    """Searches one shard. ``store_for(shard)`` returns that shard's store (cached by the caller's factory).

    ``timeout_s`` bounds the whole search of a shard (dense and BM25 together): a shard that does not answer in
    time while reachable raises :class:`ShardBusy` (the request is shed), one that fails raises
    :class:`ShardSearchFailed` (the answer is degraded).
    """

    def __init__(
        self, store_for: Callable[[int], VectorStore], shard_count: int, *, timeout_s: float | None = None
    ) -> None:
        self._store_for = store_for
        self._shard_count = shard_count
        self._timeout_s = timeout_s

    def run(self, shard: int, request: SearchRequest, *, dense: bool = True, lexical: bool = False) -> ShardResult:
        """Search the shard's dense and/or BM25 index with the same filter and depth."""
        if not 0 <= shard < self._shard_count:
            raise WiringError(f"shard {shard} is out of range 0..{self._shard_count - 1}")
        started = time.perf_counter()
        store = self._store_for(shard)

        def within_deadline(search: Callable[[SearchRequest], list[Hit]]) -> list[Hit]:
            if self._timeout_s is None:
                return search(request)
            remaining = self._timeout_s - (time.perf_counter() - started)
            if remaining <= 0:
                raise ShardBusy(f"shard {shard}: no time left of {self._timeout_s} s (busy, not down)")
            return search(request.model_copy(update={"timeout_s": remaining}))

        try:
            dense_hits = within_deadline(store.search) if dense else []
            lexical_hits = within_deadline(store.search_lexical) if lexical else []
        except (BadRequest, ShardBusy):
            raise
        except Exception as exc:  # any store failure is this shard's failure (or saturation), reported by name
            if is_saturation(exc):
                raise ShardBusy(f"shard {shard}: no answer within {self._timeout_s} s (busy, not down)") from exc
            raise ShardSearchFailed(f"shard {shard}: {type(exc).__name__}: {exc}") from exc
        took_ms = (time.perf_counter() - started) * 1000
        return ShardResult(shard=shard, status="ok", hits=dense_hits, lexical=lexical_hits, took_ms=round(took_ms, 3))
