"""The query-embedding cache, the answer cache (memory and DynamoDB on moto), the index version (memory, file,
DynamoDB) and the workflow answering a repeated query from the cache until the index changes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from shardrag.bm25 import Bm25Encoder, CorpusStats
from shardrag.caching import (
    AnswerCaching,
    DynamoDbAnswerCache,
    DynamoDbIndexVersion,
    FileIndexVersion,
    MemoryAnswerCache,
    MemoryIndexVersion,
    QueryEmbeddingCache,
    cacheable,
    normalise_question,
)
from shardrag.chunking import Chunker, Document
from shardrag.config import Settings
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.indexing import DocumentIndexer
from shardrag.services import build_answer_caching, build_query_workflow
from shardrag.store.memory import InMemoryVectorStore
from shardrag.workflow import QueryWorkflow


# -- query embeddings ---------------------------------------------------------------------------------------------
def test_query_embeddings_are_cached_per_model_and_normalised_question_within_a_bound() -> None:
    calls: list[str] = []

    def embed(text: str) -> list[float]:
        calls.append(text)
        return [float(len(text)), 1.0]

    cache = QueryEmbeddingCache(embed, model_id="m", max_entries=2)
    assert cache("What  causes\ttides? ") == cache("What causes tides?") == [18.0, 1.0]
    assert calls == ["What causes tides?"] and (cache.hits, cache.misses) == (1, 1)
    cache("what causes tides?")  # case is not folded: a cased model would see another text
    cache("third")
    assert len(cache) == 2 and len(calls) == 3
    cache("What causes tides?")  # evicted (least recently used)
    assert len(calls) == 4
    vector = cache("third")
    vector.append(99.0)  # a caller changing its copy does not change the cache
    assert cache("third") == [5.0, 1.0]


def test_a_zero_sized_query_cache_embeds_every_time() -> None:
    calls: list[str] = []
    cache = QueryEmbeddingCache(lambda t: calls.append(t) or [1.0], model_id="m", max_entries=0)
    cache("q")
    cache("q")
    assert calls == ["q", "q"] and len(cache) == 0


def test_normalisation_is_nfc_and_whitespace_only() -> None:
    assert normalise_question("  Cafe\u0301 \n au   lait ") == "Caf\u00e9 au lait"
    assert normalise_question("Tides?") != normalise_question("tides?")


# -- answer stores ------------------------------------------------------------------------------------------------
def test_the_memory_answer_cache_expires_and_evicts() -> None:
    now = {"t": 0.0}
    cache = MemoryAnswerCache(max_entries=2, ttl_s=10, clock=lambda: now["t"])
    cache.put("a", {"answer": "A"})
    cache.put("b", {"answer": "B"})
    got = cache.get("a")
    assert got == {"answer": "A"}
    got["answer"] = "changed"
    assert cache.get("a") == {"answer": "A"}
    cache.put("c", {"answer": "C"})  # evicts b (a was used more recently)
    assert cache.get("b") is None and cache.get("c") == {"answer": "C"}
    now["t"] = 10.0
    assert cache.get("a") is None and len(cache) == 1


@pytest.fixture
def table() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="answers",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        )
        yield client


def test_the_dynamodb_answer_cache_round_trips_and_honours_expiry_before_ttl_deletes(table: Any) -> None:
    now = {"t": 1_000_000.0}
    cache = DynamoDbAnswerCache(table, "answers", ttl_s=60, clock=lambda: now["t"])
    response = {"answer": "Tides follow the Moon [1].", "hits": [{"text": "é" * 100}], "cache": "miss"}
    cache.put("k", response)
    assert cache.get("k") == response and cache.get("other") is None
    item = table.get_item(TableName="answers", Key={"pk": {"S": "answer#k"}})["Item"]
    assert int(item["expires_at"]["N"]) == 1_000_060  # what the table's TTL deletes on
    now["t"] += 60
    assert cache.get("k") is None  # expired, even though DynamoDB has not deleted it yet


def test_an_answer_too_large_for_an_item_is_answered_but_not_stored(table: Any) -> None:
    cache = DynamoDbAnswerCache(table, "answers", ttl_s=60)
    import os

    cache.put("big", {"answer": os.urandom(400_000).hex()})
    assert cache.get("big") is None


# -- index version --------------------------------------------------------------------------------------------------
def test_the_file_index_version_is_atomic_across_concurrent_writers(tmp_path: Path) -> None:
    version = FileIndexVersion(tmp_path / "index" / "index-version")
    assert version.current() == 0
    threads = [threading.Thread(target=lambda: [version.advance() for _ in range(25)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert version.current() == 100
    assert FileIndexVersion(tmp_path / "index" / "index-version").current() == 100  # another process's view


def test_the_dynamodb_index_version_advances_atomically(table: Any) -> None:
    version = DynamoDbIndexVersion(table, "answers")
    assert version.current() == 0
    assert [version.advance() for _ in range(3)] == [1, 2, 3]
    assert version.current() == 3


# -- keys and what may be cached ------------------------------------------------------------------------------------
REQUEST = {"question": "What causes tides?", "mode": "hybrid", "top_k": 5, "filter_expr": "", "tenant": ""}


def test_the_key_covers_the_request_the_configuration_and_the_index_version() -> None:
    version = MemoryIndexVersion()
    caching = AnswerCaching(MemoryAnswerCache(max_entries=8, ttl_s=60), version, fingerprint="config-1")
    key = caching.key(REQUEST)
    assert key == caching.key({**REQUEST, "question": " What causes   tides? "})
    for change in ({"mode": "dense"}, {"top_k": 6}, {"filter_expr": 'source like "a%"'}, {"tenant": "t2"}):
        assert caching.key({**REQUEST, **change}) != key, change
    assert (
        AnswerCaching(MemoryAnswerCache(max_entries=8, ttl_s=60), version, fingerprint="config-2").key(REQUEST) != key
    )
    version.advance()
    assert caching.key(REQUEST) != key


def test_degraded_and_rerank_failed_answers_are_never_cached() -> None:
    assert cacheable({"degraded": False, "rerank": None})
    assert cacheable({"degraded": False, "rerank": {"status": "ok"}})
    assert not cacheable({"degraded": True, "rerank": None})
    assert not cacheable({"degraded": False, "rerank": {"status": "failed", "reason": "timeout"}})
    # Dense feedback: an answer without its round (failed, or shed under load) is below what the request gets.
    for status, stored in (("ok", True), ("empty", True), ("failed", False), ("skipped", False)):
        assert cacheable({"degraded": False, "rerank": None, "feedback": {"status": status}}) is stored
    assert cacheable({"degraded": False, "rerank": None, "feedback": None})
    store = MemoryAnswerCache(max_entries=8, ttl_s=60)
    caching = AnswerCaching(store, MemoryIndexVersion(), fingerprint="c")
    assert not caching.put("k", {"degraded": True})
    assert len(store) == 0


class _Broken:
    def get(self, key: str) -> Any:
        raise ConnectionError("cache down")

    def put(self, key: str, response: Any) -> None:
        raise ConnectionError("cache down")

    def current(self) -> int:
        raise ConnectionError("table down")

    def advance(self) -> int:
        raise ConnectionError("table down")


def test_a_failing_cache_is_a_miss_never_a_failed_query() -> None:
    caching = AnswerCaching(_Broken(), MemoryIndexVersion(), fingerprint="c")
    assert caching.get("k") is None and caching.put("k", {"degraded": False}) is False
    assert AnswerCaching(MemoryAnswerCache(max_entries=1, ttl_s=1), _Broken(), fingerprint="c").key(REQUEST) is None


def test_answers_are_cached_only_where_the_settings_say(tmp_path: Path) -> None:
    assert build_answer_caching(Settings(data_dir=str(tmp_path))) is None
    assert isinstance(build_answer_caching(Settings(data_dir=str(tmp_path), cache={"answers": True})), AnswerCaching)


# -- the workflow -------------------------------------------------------------------------------------------------
DOCS = {
    "tides": "Ocean tides are caused by the gravitational pull of the Moon on the oceans.",
    "bees": "Honeybees communicate the direction of food with the waggle dance.",
}


@pytest.fixture
def cached_workflow(hashing_embedder: Any) -> tuple[QueryWorkflow, list[InMemoryVectorStore], MemoryIndexVersion]:
    settings = Settings(store={"shard_count": 2, "dimension": hashing_embedder.dimension}, cache={"answers": True})
    stores = [InMemoryVectorStore(shard=i, dimension=hashing_embedder.dimension) for i in range(2)]
    DocumentIndexer(
        chunker=Chunker(size=50, overlap=10), embedder=hashing_embedder, store_for=stores.__getitem__, shard_count=2
    ).run([Document(doc_id=k, text=v, version="1") for k, v in DOCS.items()])
    version = MemoryIndexVersion()
    answers = AnswerCaching(MemoryAnswerCache(max_entries=16, ttl_s=60), version, fingerprint="test")
    workflow = build_query_workflow(
        settings,
        embed=lambda text: [float(x) for x in hashing_embedder.embed([text])[0]],
        lexical=lambda text: Bm25Encoder().query(text, CorpusStats()),
        stores=stores.__getitem__,
        make_generator=ExtractiveGenerator,
        answers=answers,
    )
    return workflow, stores, version


def _ask(workflow: QueryWorkflow, body: dict[str, Any], fail_shard: int | None = None) -> dict[str, Any]:
    embedded = json.loads(json.dumps(workflow.embed({"request": body, "started_at": "2026-01-01T00:00:00Z"})))
    if embedded["cached"] is not None:
        return embedded["cached"]  # the state machine's CachedAnswer state
    route = workflow.route({"request": embedded["request"], "vector": embedded["vector"]})
    shards = []
    for index in range(2):
        if index == fail_shard:
            shards.append({"shard": index, "status": "failed", "error": "ShardSearchFailed"})
            continue
        out = workflow.search(
            {"shard": index, "request": embedded["request"], "vector": embedded["vector"], "sparse": None}
        )
        shards.append({"shard": index, "status": "ok", **out})
    return workflow.fuse_generate(
        {"request": embedded["request"], "shards": shards, "route": route, "timings_ms": embedded["timings_ms"]}
    )


def test_a_repeated_question_is_answered_from_the_cache_until_the_index_changes(cached_workflow: Any) -> None:
    workflow, _stores, version = cached_workflow
    body = {"question": "What causes the tides?", "mode": "dense", "top_k": 2}
    first = _ask(workflow, body)
    assert first["cache"] == "miss" and "Moon" in first["answer"]
    again = _ask(workflow, {**body, "question": "What causes  the tides? "})
    assert again["cache"] == "hit"
    assert {k: v for k, v in again.items() if k not in ("cache", "timings_ms")} == {
        k: v for k, v in first.items() if k not in ("cache", "timings_ms")
    }
    assert set(again["timings_ms"]) == {"cache", "total"}
    assert _ask(workflow, {**body, "top_k": 1})["cache"] == "miss"  # another request, another key
    version.advance()  # an ingest, a delete or a rebalance
    assert _ask(workflow, body)["cache"] == "miss"


def test_a_degraded_answer_is_not_served_again(cached_workflow: Any) -> None:
    workflow, _, _ = cached_workflow
    body = {"question": "How do bees communicate?", "mode": "dense", "top_k": 2}
    degraded = _ask(workflow, body, fail_shard=0)
    assert degraded["degraded"] is True and degraded["cache"] == "miss"
    assert _ask(workflow, body)["cache"] == "miss"
    assert _ask(workflow, body)["cache"] == "hit"
