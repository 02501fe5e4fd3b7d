"""The answer cache: a query asked again, of an index that has not changed, is answered from the cache.

The key is exact: a hash of the normalised question and every other field of the resolved request (mode, the
compiled filters, which carry the tenant scope, the tenant, top_k, candidate depth, generate, include_text,
probe), the configuration fingerprint (generator and its model, prompt version, reranker, fusion, routing,
embedding model) and the **index version** read before the search. Every ingest, delete and rebalance advances
that version (``shardrag.caching.index_version``), so a cached answer can never cite a document that changed.

Degraded answers (a shard failed), answers whose reranking failed, answers that lost their dense feedback round
(failed, or skipped under load: the same question would get the round a moment later) and failed queries are
never stored. The
cache is off by default (``cache.answers``); when on it lives in memory locally and in DynamoDB deployed (one
item per answer, expired by the table's TTL). A cache that fails is a miss, never a failed query.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from shardrag.caching.embeddings import normalise_question
from shardrag.caching.index_version import IndexVersion

log = logging.getLogger("shardrag.caching")

#: DynamoDB caps an item at 400 KB; a compressed answer above this is not stored (it is answered, not cached).
MAX_ITEM_BYTES = 350_000


@runtime_checkable
class AnswerCache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None:
        """The response stored under ``key``, or ``None`` (absent or expired)."""
        ...

    def put(self, key: str, response: Mapping[str, Any]) -> None:
        """Store ``response`` under ``key`` for the cache's time to live."""
        ...


class MemoryAnswerCache:
    """A bounded LRU with a time to live, in this process (the local runtime)."""

    def __init__(self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_entries
        self._ttl = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            body = entry[1]
        # Kept serialised: a caller can change what it got without changing what is cached.
        result: dict[str, Any] = json.loads(body)
        return result

    def put(self, key: str, response: Mapping[str, Any]) -> None:
        body = json.dumps(response)
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl, body)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


class DynamoDbAnswerCache:
    """One item per answer (``pk`` ``answer#<key>``, the response gzipped in ``body``, ``expires_at`` in epoch
    seconds: the table's TTL attribute). DynamoDB deletes expired items lazily, so a read checks the time too."""

    def __init__(self, client: Any, table_name: str, *, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._db = client
        self._table = table_name
        self._ttl = ttl_s
        self._clock = clock

    def get(self, key: str) -> dict[str, Any] | None:
        # Eventually consistent: a read that misses a just-written answer costs one recomputation, nothing more
        # (the key, not the read, carries the index version).
        item = self._db.get_item(TableName=self._table, Key={"pk": {"S": f"answer#{key}"}}).get("Item")
        if not item or int(item["expires_at"]["N"]) <= self._clock():
            return None
        result: dict[str, Any] = json.loads(gzip.decompress(item["body"]["B"]))
        return result

    def put(self, key: str, response: Mapping[str, Any]) -> None:
        body = gzip.compress(json.dumps(response).encode("utf-8"))
        if len(body) > MAX_ITEM_BYTES:
            log.info("answer of %d compressed bytes not cached (item limit)", len(body))
            return
        self._db.put_item(
            TableName=self._table,
            Item={
                "pk": {"S": f"answer#{key}"},
                "body": {"B": body},
                "expires_at": {"N": str(int(self._clock() + self._ttl))},
            },
        )


def cacheable(response: Mapping[str, Any]) -> bool:
    """Whether an answer may be served again: not degraded, and not one whose reranking failed or whose dense
    feedback round failed or was skipped (an answer below what the same request normally gets)."""
    if response.get("degraded"):
        return False
    rerank = response.get("rerank")
    if isinstance(rerank, Mapping) and rerank.get("status") != "ok":
        return False
    feedback = response.get("feedback")
    return not (isinstance(feedback, Mapping) and feedback.get("status") in ("failed", "skipped"))


class AnswerCaching:
    """What the query workflow asks of the answer cache. ``fingerprint``: the configuration an answer depends on
    besides the request (see the module docstring)."""

    def __init__(self, cache: AnswerCache, version: IndexVersion, *, fingerprint: str) -> None:
        self._cache = cache
        self._version = version
        self._fingerprint = fingerprint

    def key(self, request: Mapping[str, Any]) -> str | None:
        """The key of a resolved request (its fields as JSON) at the current index version; ``None`` when the
        version cannot be read (then nothing is looked up or stored for this query)."""
        try:
            version = self._version.current()
        except Exception:
            log.warning("index version unreadable: answering without the cache", exc_info=True)
            return None
        material = {
            **request,
            "question": normalise_question(str(request.get("question", ""))),
            "index_version": version,
            "config": self._fingerprint,
        }
        encoded = json.dumps(material, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
        return hashlib.sha256(encoded).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return self._cache.get(key)
        except Exception:
            log.warning("answer cache unreadable: answering without it", exc_info=True)
            return None

    def put(self, key: str, response: Mapping[str, Any]) -> bool:
        """Store ``response`` if it may be served again; whether it was stored."""
        if not cacheable(response):
            return False
        try:
            self._cache.put(key, response)
        except Exception:
            log.warning("answer not cached", exc_info=True)
            return False
        return True


def config_fingerprint(parts: Mapping[str, Any]) -> str:
    """A short stable hash of the configuration an answer depends on."""
    encoded = json.dumps(parts, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()[:24]
