"""POST /query end to end: HTTP front -> moto's Step Functions engine running statemachines/query.asl.json ->
the real handlers in process -> Milvus Lite shards and the real model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _post(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_question_gets_a_cited_answer_from_the_sample_corpus(api_url: str) -> None:
    status, body = _post(api_url + "/query", {"question": "What causes ocean tides?"})
    assert status == 200
    assert {"answer", "citations", "hits", "degraded", "shards", "timings_ms"} <= set(body)
    assert body["citations"], body
    top = body["citations"][0]
    assert top["doc_id"] == "sample/tides.txt"
    assert top["source"] == "s3://shardrag-documents/sample/tides.txt"
    assert {"doc_id", "chunk_id", "source", "score", "text"} <= set(top)
    assert "Moon" in body["answer"] and "[1]" in body["answer"]
    assert body["degraded"] is False and body["shards"]["searched"] == [0, 1, 2, 3]
    assert {"embed", "route", "search", "fuse", "generate", "total"} <= set(body["timings_ms"])


def test_generate_false_returns_ranked_hits(api_url: str) -> None:
    status, body = _post(
        api_url + "/query", {"question": "How do honeybees communicate?", "generate": False, "top_k": 3}
    )
    assert status == 200
    assert body["answer"] is None and body["citations"] == []
    hits = body["hits"]
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["doc_id"] == "sample/honeybees.txt"
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_results_are_independent_of_the_shard_that_holds_them(api_url: str, local_runtime: Any) -> None:
    """Hash sharding + exact merge: the API's ranking equals a brute-force ranking over every stored chunk."""
    from shardrag import services
    from shardrag.records import SearchRequest

    question = "volcanic eruptions and tectonic plates"
    _, body = _post(api_url + "/query", {"question": question, "generate": False, "top_k": 5, "mode": "dense"})
    vector = services.embed_one(question)
    everything = []
    for store in services.shard_stores().all():
        everything.extend(store.search(SearchRequest(vector=vector, top_k=100)))
    expected = [h.chunk_id for h in sorted(everything, key=lambda h: (-h.score, h.chunk_id))[:5]]
    assert [h["chunk_id"] for h in body["hits"]] == expected


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        json.dumps({}).encode(),
        json.dumps({"question": ""}).encode(),
        json.dumps({"question": "x" * 100_000}).encode(),
        json.dumps({"question": "ok", "top_k": -3}).encode(),
        json.dumps({"question": "ok", "top_k": 51}).encode(),
        json.dumps({"question": "ok", "filters": {"no_such_field": "x"}}).encode(),
        b"",
    ],
)
def test_bad_requests_get_a_400_json_error(api_url: str, raw: bytes) -> None:
    status, body = _post(api_url + "/query", raw=raw)
    assert status == 400
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]


def test_validation_inside_the_workflow_maps_to_400(local_runtime: Any) -> None:
    """The Embed step validates too (API Gateway's validator is not the only line): its BadRequest travels as the
    Step Functions error name and maps to 400 without a stack trace."""
    status, body = local_runtime.execute({"question": "ok", "top_k": 0})
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert "Traceback" not in json.dumps(body) and "File " not in json.dumps(body)


def test_filters_restrict_hits(api_url: str) -> None:
    status, body = _post(
        api_url + "/query",
        {"question": "coffee", "generate": False, "filters": {"doc_id": "sample/tides.txt"}},
    )
    assert status == 200 and {h["doc_id"] for h in body["hits"]} == {"sample/tides.txt"}
    status, body = _post(api_url + "/query", {"question": "coffee", "filters": {"source_prefix": "s3://nowhere/"}})
    assert status == 200 and body["hits"] == [] and body["citations"] == []
    assert "could not find" in body["answer"].lower() or "no " in body["answer"].lower()


def test_health_and_openapi(api_url: str) -> None:
    assert _get(api_url + "/health")[0] == 200
    status, document = _get(api_url + "/openapi.json")
    assert status == 200 and "/query" in document["paths"]


def test_one_shard_down_degrades_and_all_down_is_503(api_url: str, local_runtime: Any) -> None:
    try:
        local_runtime.stop_shard(2)
        status, body = _post(api_url + "/query", {"question": "What causes ocean tides?"})
        assert status == 200
        assert body["degraded"] is True
        assert body["shards"]["failed"] == [2] and body["shards"]["searched"] == [0, 1, 3]
        for shard in range(4):
            local_runtime.stop_shard(shard)
        status, body = _post(api_url + "/query", {"question": "What causes ocean tides?"})
        assert status == 503 and body["error"]["code"] == "shards_unavailable"
    finally:
        for shard in range(4):
            local_runtime.start_shard(shard)
    status, body = _post(api_url + "/query", {"question": "What causes ocean tides?"})
    assert status == 200 and body["degraded"] is False


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_every_retrieval_mode_runs_through_the_state_machine(api_url: str, mode: str) -> None:
    status, body = _post(api_url + "/query", {"question": "What causes ocean tides?", "mode": mode, "generate": False})
    assert status == 200, body
    assert body["hits"] and body["degraded"] is False and body["shards"]["searched"] == [0, 1, 2, 3]
    assert any("tide" in h["text"].lower() for h in body["hits"][:3])


def test_an_unknown_mode_is_a_400(api_url: str) -> None:
    status, body = _post(api_url + "/query", {"question": "tides?", "mode": "sparse"})
    assert status == 400 and body["error"]["code"] == "bad_request" and "mode" in body["error"]["message"]


def test_a_filter_matching_nothing_answers_that_nothing_was_found(api_url: str) -> None:
    status, body = _post(api_url + "/query", {"question": "What causes ocean tides?", "filters": {"doc_id": "nope"}})
    assert status == 200 and body["hits"] == [] and body["citations"] == []
    assert body["answer"] and "tide" not in body["answer"].lower()


def test_rebuilt_term_statistics_equal_what_ingestion_kept(api_url: str, local_runtime: Any) -> None:
    from shardrag import services

    kept = services.term_stats_store().merged()
    status, body = _post(api_url + "/admin/term-stats/rebuild", {})
    assert status == 200
    # The rebuild reports the rows it recounted; the tables count lexical units (a unit's rows but one count
    # for nothing), so there are at least as many rows as units.
    assert sum(body["chunks_per_shard"].values()) >= kept.documents > 0
    assert services.term_stats_store().merged() == kept


def test_a_hybrid_query_runs_the_dense_feedback_round_unless_it_asks_not_to(api_url: str) -> None:
    question = {"question": "Why do honeybees dance?", "mode": "hybrid", "generate": False}
    status, body = _post(api_url + "/query", question)
    assert status == 200, body
    assert body["feedback"] == {"status": "ok", "documents": 2, "reason": ""}
    assert "feedback" in body["timings_ms"] and body["hits"][0]["doc_id"] == "sample/honeybees.txt"
    status, first_pass = _post(api_url + "/query", {**question, "feedback": False})
    assert status == 200 and first_pass["feedback"] is None and "feedback" not in first_pass["timings_ms"]
    status, dense = _post(api_url + "/query", {**question, "mode": "dense"})
    assert status == 200 and dense["feedback"] is None
    status, body = _post(api_url + "/query", {**question, "mode": "bm25", "feedback": True})
    assert status == 400 and "hybrid mode only" in body["error"]["message"]


def test_a_failed_feedback_invocation_is_caught_and_the_first_pass_answers(
    api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardrag.workflow import QueryWorkflow

    question = {"question": "What causes ocean tides?", "mode": "hybrid"}
    status, first_pass = _post(api_url + "/query", {**question, "generate": False, "feedback": False})
    assert status == 200

    def crash(self: QueryWorkflow, payload: Any) -> dict[str, Any]:
        raise RuntimeError("the Feedback function crashed")

    # The Feedback Lambda itself fails (not a shard: that the step handles itself): the state machine's Catch
    # goes on to FuseAndGenerate with the first pass, and the answer says what happened.
    monkeypatch.setattr(QueryWorkflow, "feedback", crash)
    status, body = _post(api_url + "/query", question)
    assert status == 200, body
    assert body["feedback"]["status"] == "failed" and body["feedback"]["reason"]
    assert body["citations"] and body["degraded"] is False
    status, ranked = _post(api_url + "/query", {**question, "generate": False})
    assert status == 200 and [h["chunk_id"] for h in ranked["hits"]] == [h["chunk_id"] for h in first_pass["hits"]]
