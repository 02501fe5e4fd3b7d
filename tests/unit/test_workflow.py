"""The workflow steps with the in-memory store and a hashing embedder (no model, no Milvus)."""

from __future__ import annotations

import json

import pytest
import shardrag.workflow as workflow_module
from shardrag.bm25 import Bm25Encoder, CorpusStats
from shardrag.chunking import Chunker, Document
from shardrag.config import Settings
from shardrag.errors import BadRequest, Forbidden, ShardBusy, ShardSearchFailed, ShardsUnavailable, WiringError
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.indexing import DocumentIndexer
from shardrag.rerank import RerankFailed
from shardrag.services import build_query_workflow
from shardrag.store.memory import InMemoryVectorStore
from shardrag.visibility import MemoryEpochClock
from shardrag.workflow import IDS_ONLY_MAX_HITS, PAYLOAD_HIT_BUDGET_BYTES, Caller, QueryWorkflow, hit_text_budget

DOCS = {
    "tides": "Ocean tides are caused by the gravitational pull of the Moon on the oceans.",
    "bees": "Honeybees communicate the direction of food with the waggle dance.",
    "coffee": "Espresso needs a fine grind and about 25 seconds under pressure.",
}


@pytest.fixture
def setup(hashing_embedder, workflow_over):  # type: ignore[no-untyped-def]
    settings = Settings(store={"shard_count": 3, "dimension": hashing_embedder.dimension})
    stores = [InMemoryVectorStore(shard=i, dimension=hashing_embedder.dimension) for i in range(3)]
    indexer = DocumentIndexer(
        chunker=Chunker(size=50, overlap=10),
        embedder=hashing_embedder,
        store_for=stores.__getitem__,
        shard_count=3,
    )
    indexer.run([Document(doc_id=k, text=v, source=f"s3://b/{k}.txt", version="1") for k, v in DOCS.items()])
    workflow = workflow_over(settings, stores, DOCS)
    return workflow, stores


def _run(workflow: QueryWorkflow, body: dict) -> dict:
    """Drive the steps the way the state machine wires them (JSON in between, as across Lambda)."""
    embedded = json.loads(json.dumps(workflow.embed({"request": body, "started_at": "2026-01-01T00:00:00Z"})))
    route = workflow.route({"request": embedded["request"], "vector": embedded["vector"]})
    shards = []
    for shard, selected in sorted(route["selected"].items()):
        index = int(shard.removeprefix("shard_"))
        if not selected:
            shards.append({"shard": index, "status": "skipped"})
            continue
        try:
            out = workflow.search(
                {
                    "shard": index,
                    "request": embedded["request"],
                    "vector": embedded["vector"],
                    "sparse": embedded["sparse"],
                }
            )
            shards.append({"shard": index, "status": "ok", **out})
        except ShardSearchFailed:
            shards.append({"shard": index, "status": "failed", "error": "ShardSearchFailed"})
    return workflow.fuse_generate(
        {
            "request": embedded["request"],
            "shards": shards,
            "route": route,
            "timings_ms": embedded["timings_ms"],
        }
    )


def test_question_is_answered_with_a_citation_to_the_right_document(setup) -> None:  # type: ignore[no-untyped-def]
    workflow, _ = setup
    response = _run(workflow, {"question": "what is the waggle dance of honeybees"})
    assert response["hits"][0]["doc_id"] == "bees"
    assert response["citations"] and response["citations"][0]["doc_id"] == "bees"
    assert "[1]" in response["answer"]
    assert response["degraded"] is False and response["shards"]["searched"] == [0, 1, 2]
    assert set(response["timings_ms"]) >= {"embed", "route", "search", "fuse", "generate"}


def test_generate_false_returns_ranked_hits_only(setup) -> None:  # type: ignore[no-untyped-def]
    workflow, _ = setup
    response = _run(workflow, {"question": "gravitational pull of the moon", "generate": False, "top_k": 2})
    assert response["answer"] is None and response["citations"] == []
    assert [h["rank"] for h in response["hits"]] == [1, 2]
    assert response["hits"][0]["doc_id"] == "tides"
    assert response["hits"][0]["score"] >= response["hits"][1]["score"]


def test_one_shard_down_degrades_all_down_is_unavailable(setup) -> None:  # type: ignore[no-untyped-def]
    workflow, stores = setup
    stores[1].unavailable = True
    response = _run(workflow, {"question": "espresso grind"})
    assert response["degraded"] is True and response["shards"]["failed"] == [1]
    for store in stores:
        store.unavailable = True
    with pytest.raises(ShardsUnavailable):
        _run(workflow, {"question": "espresso grind"})


def test_invalid_request_is_rejected_in_the_embed_step(setup) -> None:  # type: ignore[no-untyped-def]
    workflow, _ = setup
    with pytest.raises(BadRequest):
        workflow.embed({"request": {"question": ""}})
    with pytest.raises(BadRequest, match="unknown field"):
        workflow.embed({"request": {"question": "q", "filters": {"nope": 1}}})


def test_malformed_step_payloads_are_wiring_errors_not_bad_requests(setup) -> None:  # type: ignore[no-untyped-def]
    # The state machine builds these payloads: a malformed one is our bug (a 500), never the caller's (a 400).
    workflow, _ = setup
    with pytest.raises(WiringError):
        workflow.search({"shard": 0})
    with pytest.raises(WiringError, match="out of range"):
        workflow.search({"shard": 7, "request": workflow.resolve({"question": "q"}).model_dump(), "vector": [0.0] * 64})


def test_hit_text_is_bounded_so_the_parallel_output_fits_the_payload_limit() -> None:
    for shards, candidates in [(1, 10), (4, 50), (8, 50), (64, 200)]:
        budget = hit_text_budget(shards, candidates)
        # ~400 bytes of ids/metadata per hit on top of the text
        assert shards * candidates * min(budget + 400, 2400) <= max(PAYLOAD_HIT_BUDGET_BYTES, shards * candidates * 600)
        assert 200 <= budget <= 2000


def test_ids_only_hits_carry_no_text_and_respect_the_payload_limit(setup) -> None:  # type: ignore[no-untyped-def]
    workflow, _ = setup
    response = _run(workflow, {"question": "waggle dance", "generate": False, "include_text": False, "top_k": 60})
    assert response["hits"] and all(h["text"] == "" and h["source"] == "" for h in response["hits"])
    assert response["hits"][0]["doc_id"] == "bees"


def test_ids_only_depth_is_bounded_by_shard_count(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(store={"shard_count": 16, "dimension": hashing_embedder.dimension})
    workflow = build_query_workflow(settings, embed=lambda t: [0.0], stores=lambda i: None, make_generator=lambda: None)  # type: ignore[arg-type,return-value]
    for mode, lists in (("dense", 1), ("bm25", 1), ("hybrid", 2)):
        deepest = IDS_ONLY_MAX_HITS // (16 * lists)
        body = {"question": "q", "generate": False, "include_text": False, "mode": mode}
        assert workflow.resolve({**body, "top_k": deepest}).candidates == deepest
        with pytest.raises(BadRequest, match="payload limit"):
            workflow.resolve({**body, "top_k": deepest + 1})


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_every_mode_finds_the_document_and_reports_its_lists(setup, mode: str) -> None:  # type: ignore[no-untyped-def]
    workflow, _ = setup
    embedded = workflow.embed({"request": {"question": "waggle dance of honeybees", "mode": mode}})
    assert embedded["request"]["mode"] == mode
    assert (embedded["sparse"] is None) == (mode == "dense")
    response = _run(workflow, {"question": "waggle dance of honeybees", "mode": mode, "generate": False})
    assert response["hits"][0]["doc_id"] == "bees"


def test_bm25_mode_matches_words_not_meaning(setup) -> None:  # type: ignore[no-untyped-def]
    workflow, _ = setup
    response = _run(workflow, {"question": "zzz unknown words only", "mode": "bm25", "generate": False})
    assert response["hits"] == []


def test_default_mode_comes_from_settings(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(retrieval={"mode": "dense"}, store={"dimension": hashing_embedder.dimension})
    workflow = build_query_workflow(settings, embed=lambda t: [0.0], lexical=lambda t: None, stores=lambda i: None)  # type: ignore[arg-type,return-value]
    assert workflow.resolve({"question": "q"}).mode == "dense"
    assert workflow.resolve({"question": "q", "mode": "bm25"}).mode == "bm25"
    for bad in ("sparse", "", 1, "HYBRID"):
        with pytest.raises(BadRequest, match="mode"):
            workflow.resolve({"question": "q", "mode": bad})


def _tenant_workflow(hashing_embedder, mode: str = "multi") -> QueryWorkflow:  # type: ignore[no-untyped-def]
    settings = Settings(
        tenancy={"mode": mode},
        ingestion={"tenant_source": "key_prefix" if mode == "multi" else "default"},
        store={"dimension": hashing_embedder.dimension},
        retrieval={"metadata_fields": {"lang": "string"}},
    )
    return build_query_workflow(
        settings, embed=lambda t: [0.0], lexical=lambda t, tenant="": None, stores=lambda i: None
    )  # type: ignore[arg-type,return-value]


def test_multi_tenant_queries_are_scoped_to_the_callers_tenant(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    workflow = _tenant_workflow(hashing_embedder)
    query = workflow.resolve({"question": "q", "filters": {"lang": "en"}}, Caller(tenant="acme"))
    assert query.tenant == "acme"
    assert query.filter_expr == 'tenant == "acme" and metadata["lang"] == "en"'
    assert workflow.resolve({"question": "q"}, Caller(tenant="acme")).filter_expr == 'tenant == "acme"'


@pytest.mark.parametrize("tenant", ["", "   ", 'a" or tenant != "b', "../x", "x" * 200])
def test_multi_tenant_without_a_valid_tenant_is_forbidden(hashing_embedder, tenant: str) -> None:  # type: ignore[no-untyped-def]
    workflow = _tenant_workflow(hashing_embedder)
    with pytest.raises(Forbidden):
        workflow.resolve({"question": "q"}, Caller(tenant=tenant))
    with pytest.raises(Forbidden):
        workflow.embed({"request": {"question": "q"}, "caller": {"tenant": tenant}})


def test_the_tenant_never_comes_from_the_request_body(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    workflow = _tenant_workflow(hashing_embedder)
    with pytest.raises(BadRequest, match="tenant"):
        workflow.resolve({"question": "q", "tenant": "acme"}, Caller(tenant="other"))


def test_single_tenant_mode_ignores_the_caller(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    workflow = _tenant_workflow(hashing_embedder, mode="single")
    query = workflow.resolve({"question": "q"}, Caller(tenant="acme"))
    assert query.tenant == "" and query.filter_expr == ""


class _Reverse:
    name = "reverse"

    def run(self, question: str, hits: list, top_n: int) -> list:  # type: ignore[type-arg]
        return [h.model_copy(update={"score": float(i)}) for i, h in enumerate(reversed(hits))][:top_n]


class _Broken:
    name = "broken"

    def run(self, question: str, hits: list, top_n: int) -> list:  # type: ignore[type-arg]
        raise RerankFailed("throttled", reason="ThrottlingException")


def _rerank_workflow(setup, hashing_embedder, reranker) -> QueryWorkflow:  # type: ignore[no-untyped-def]
    _, stores = setup
    settings = Settings(
        store={"shard_count": 3, "dimension": hashing_embedder.dimension},
        rerank={"kind": "bedrock", "max_candidates": 20},
        retrieval={"mode": "dense"},
    )
    return build_query_workflow(
        settings,
        embed=lambda text: [float(x) for x in hashing_embedder.embed([text])[0]],
        lexical=lambda text: None,  # type: ignore[arg-type,return-value]
        stores=stores.__getitem__,
        make_generator=ExtractiveGenerator,
        make_reranker=lambda: reranker,
    )


def test_the_reranker_reorders_the_fused_candidates_before_generation(setup, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    plain = _run(setup[0], {"question": "waggle dance", "mode": "dense", "top_k": 3, "generate": False})
    reranked = _run(_rerank_workflow(setup, hashing_embedder, _Reverse()), {"question": "waggle dance", "top_k": 3})
    assert reranked["rerank"] == {"model": "reverse", "status": "ok", "candidates": 3}
    assert [h["chunk_id"] for h in reranked["hits"]] == [h["chunk_id"] for h in reversed(plain["hits"])]
    assert reranked["citations"][0]["chunk_id"] in {h["chunk_id"] for h in reranked["hits"]}
    assert plain["rerank"] is None


def test_a_failed_rerank_keeps_the_fused_order_and_says_so(setup, hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    plain = _run(setup[0], {"question": "waggle dance", "mode": "dense", "top_k": 3})
    fallback = _run(_rerank_workflow(setup, hashing_embedder, _Broken()), {"question": "waggle dance", "top_k": 3})
    assert fallback["rerank"] == {"model": "broken", "status": "failed", "reason": "ThrottlingException"}
    assert [h["chunk_id"] for h in fallback["hits"]] == [h["chunk_id"] for h in plain["hits"]]
    assert fallback["answer"]


def test_hybrid_shards_fetch_a_larger_share_when_routing_searches_fewer_of_them(setup) -> None:  # type: ignore[no-untyped-def]
    workflow, stores = setup
    asked: list[int] = []
    original = stores[0].search_lexical

    def spy(request):  # type: ignore[no-untyped-def]
        asked.append(request.top_k)
        return original(request)

    stores[0].search_lexical = spy  # type: ignore[method-assign]
    embedded = json.loads(json.dumps(workflow.embed({"request": {"question": "bees", "mode": "hybrid"}})))
    step = {"shard": 0, **{k: embedded[k] for k in ("request", "vector", "sparse")}}
    workflow.search({**step, "searched": [0, 1, 2]})
    workflow.search({**step, "searched": [0]})
    assert asked == [50, 100]  # ceil(100 x 1.5 / 3) and the whole fusion depth


@pytest.mark.parametrize("id_chars", [8, 400])
def test_deep_ids_only_results_always_fit_the_state_payload_limit(hashing_embedder, id_chars: int) -> None:  # type: ignore[no-untyped-def]
    """The Parallel state's output (every branch's hits) must stay under Step Functions' 256 KiB even with long
    S3 keys as ids: a shard cuts its deepest hits rather than fail the query with States.DataLimitExceeded."""
    shards = 4
    stores = [InMemoryVectorStore(shard=i, dimension=hashing_embedder.dimension) for i in range(shards)]
    indexer = DocumentIndexer(
        chunker=Chunker(size=8, overlap=0), embedder=hashing_embedder, store_for=stores.__getitem__, shard_count=shards
    )
    words = "tides moon ocean gravity pull water level coast"
    docs = [
        Document(doc_id=f"{i:0{id_chars}d}", text=f"{words} {i} " * 6, version="abcdef0123456789") for i in range(500)
    ]
    indexer.run(docs)
    stats = CorpusStats()
    for store in stores:
        stats.count(store._sparse.values(), +1)
    workflow = build_query_workflow(
        Settings(store={"shard_count": shards, "dimension": hashing_embedder.dimension}),
        embed=lambda text: [float(x) for x in hashing_embedder.embed([text])[0]],
        lexical=lambda text: Bm25Encoder().query(text, stats),
        stores=stores.__getitem__,
    )
    top_k = IDS_ONLY_MAX_HITS // (shards * 2)
    body = {"question": words, "mode": "hybrid", "top_k": top_k, "generate": False, "include_text": False}
    embedded = json.loads(json.dumps(workflow.embed({"request": body})))
    outputs = [
        {
            "shard": i,
            "status": "ok",
            **workflow.search({"shard": i, **{k: embedded[k] for k in ("request", "vector", "sparse")}}),
        }
        for i in range(shards)
    ]
    parallel_output = json.dumps(outputs).encode()
    assert len(parallel_output) <= PAYLOAD_HIT_BUDGET_BYTES + 1024
    returned = sum(len(o["hits"]) + len(o["lexical"]) for o in outputs)
    if id_chars == 8:
        assert returned == shards * 2 * top_k  # ids as short as SciFact's: nothing cut
    else:
        assert 0 < returned < shards * 2 * top_k  # long ids: the deepest ranks give way
    response = workflow.fuse_generate({"request": embedded["request"], "shards": outputs})
    # Hybrid ranks the union of each modality's top 100 (the fusion depth), or what fitted.
    assert (100 if id_chars == 8 else 1) <= len(response["hits"]) <= top_k


def test_chunk_ids_cross_the_state_machine_without_their_doc_id_and_come_back_whole() -> None:
    from shardrag.records import Hit, whole_chunk_ids
    from shardrag.workflow import FuseInput

    hit = Hit(chunk_id="o-1234::a1b2c3", doc_id="o-1234", score=0.5, position=2, shard=1)
    sent = hit.compact()
    assert sent["chunk_id"] == "::a1b2c3"  # the doc id is not repeated in the payload
    other = Hit(chunk_id="legacy-id", doc_id="o-1234", score=0.4).compact()
    assert other["chunk_id"] == "legacy-id"  # an id that does not start with its doc id travels whole
    shards = json.loads(json.dumps([{"shard": 1, "status": "ok", "hits": [sent], "lexical": [other]}]))
    request = {"question": "q", "top_k": 5, "candidates": 5, "generate": False}
    parsed = FuseInput.model_validate({"request": request, "shards": shards})
    assert parsed.shards[0].hits[0] == hit
    assert parsed.shards[0].lexical[0].chunk_id == "legacy-id"
    assert whole_chunk_ids("not a list") == "not a list"


def test_each_query_reads_one_snapshot_and_a_shard_refuses_one_older_than_the_retired_rows_grace(
    setup, hashing_embedder, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # Rows an overwrite retired are deleted ``retire_grace_s`` after its commit: a search with an older snapshot
    # could miss them, so it is shed (ShardBusy: 429, retry) rather than answered with a gap.
    _, stores = setup
    clock = MemoryEpochClock()
    for _ in range(3):
        clock.commit(clock.begin())
    pending = clock.begin()
    settings = Settings(
        store={"shard_count": 3, "dimension": hashing_embedder.dimension}, ingestion={"retire_grace_s": 40}
    )
    workflow = build_query_workflow(
        settings,
        embed=lambda text: [float(x) for x in hashing_embedder.embed([text])[0]],
        lexical=lambda text: None,  # type: ignore[arg-type,return-value]
        stores=stores.__getitem__,
        clock=clock,
    )
    now = {"t": 1_900_000_000.0}
    monkeypatch.setattr(workflow_module.time, "time", lambda: now["t"])
    embedded = workflow.embed({"request": {"question": "waggle dance", "mode": "dense", "generate": False}})
    snapshot = embedded["request"]["snapshot"]
    assert snapshot == {"upto": pending, "open": [pending], "taken_at": now["t"]}
    steps = [
        {"shard": shard, "request": embedded["request"], "vector": embedded["vector"], "sparse": None}
        for shard in range(3)
    ]
    now["t"] += 29.0  # three quarters of the grace: still served
    assert any(workflow.search(step)["hits"] for step in steps)
    now["t"] += 2.0
    with pytest.raises(ShardBusy, match="snapshot is 31 s old"):
        workflow.search(steps[0])
