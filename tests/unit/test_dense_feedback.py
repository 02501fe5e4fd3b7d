"""Dense pseudo-relevance feedback: which hits feed back, the expanded vector, and the second pass's results."""

from __future__ import annotations

import math
import threading
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shardrag.errors import BadRequest
from shardrag.feedback import DenseFeedback, opening_vectors, with_dense
from shardrag.fusion import ConvexFuser
from shardrag.records import Hit, ShardResult, Snapshot, whole_chunk_ids
from shardrag.store.base import VectorStore


def _hit(chunk_id: str, score: float, shard: int = 0) -> Hit:
    return Hit(chunk_id=chunk_id, doc_id=chunk_id.split(":")[0], score=score, shard=shard)


def test_one_hit_per_document_feeds_back_in_fused_order() -> None:
    # GIVEN a fused ranking in which document a holds the first two hits
    fused = [_hit("a:1", 3.0), _hit("a:0", 2.5), _hit("b:0", 2.0), _hit("c:0", 1.0)]
    # WHEN two documents feed back
    chosen = DenseFeedback(documents=2).feedback_hits(fused)
    # THEN each document's best hit does, a's once
    assert [h.chunk_id for h in chosen] == ["a:1", "b:0"]
    assert DenseFeedback(documents=5).feedback_hits(fused[:1]) == fused[:1]


def test_the_query_moves_towards_the_mean_of_the_feedback_and_stays_unit_length() -> None:
    feedback = DenseFeedback(documents=2, weight=1.0)
    moved = feedback.run([1.0, 0.0, 0.0], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # q + 1.0 * mean = (1, 0.5, 0.5), normalised
    norm = math.sqrt(1.5)
    assert moved == pytest.approx([1 / norm, 0.5 / norm, 0.5 / norm])
    assert sum(v * v for v in moved) == pytest.approx(1.0)


def test_nothing_to_feed_back_keeps_the_query() -> None:
    assert DenseFeedback().run([0.6, 0.8], []) == pytest.approx([0.6, 0.8])
    # Feedback that cancels the query exactly cannot be normalised: the query is kept.
    assert DenseFeedback(weight=1.0).run([1.0, 0.0], [[-1.0, 0.0]]) == pytest.approx([1.0, 0.0])


def test_feedback_of_another_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="dimension 3"):
        DenseFeedback().run([1.0, 0.0, 0.0], [[1.0, 0.0]])


@pytest.mark.parametrize(("documents", "weight"), [(0, 1.0), (2, 0.0), (2, -1.0), (2, 11.0)])
def test_arguments_are_validated(documents: int, weight: float) -> None:
    with pytest.raises(ValueError):
        DenseFeedback(documents=documents, weight=weight)


class _OpeningsStore:
    """A fake shard that holds some documents' opening chunks (and nothing else)."""

    def __init__(self, openings: dict[str, list[float]]) -> None:
        self.openings = openings
        self.asked: list[tuple[list[str], Snapshot | None]] = []
        self.by_id: list[list[str]] = []

    def opening_vectors(self, doc_ids: list[str], *, snapshot: Snapshot | None = None) -> dict[str, list[float]]:
        self.asked.append((list(doc_ids), snapshot))
        return {d: self.openings[d] for d in doc_ids if d in self.openings}

    def dense_vectors(self, chunk_ids: list[str]) -> dict[str, list[float]]:
        self.by_id.append(list(chunk_ids))
        return {c: self.openings[c.split(":")[0]] for c in chunk_ids if c.split(":")[0] in self.openings}


def test_each_document_feeds_back_its_opening_chunk_from_its_shard() -> None:
    # GIVEN two shards, and fused hits that are later chunks of their documents
    shards = {0: _OpeningsStore({"a": [1.0, 0.0]}), 1: _OpeningsStore({"b": [0.0, 1.0]})}
    hits = [_hit("a:3", 2.0, 0), _hit("b:1", 1.0, 1), _hit("gone:0", 0.5, 0)]
    snapshot = Snapshot(upto=7, open=[5])
    # WHEN their vectors are read
    vectors = opening_vectors(hits, lambda shard: cast(VectorStore, shards[shard]), snapshot)
    # THEN each shard is asked once for its documents' openings as the query's snapshot sees them, the vectors
    # come back in the hits' order, and a document not found feeds nothing
    assert vectors == [[1.0, 0.0], [0.0, 1.0]]
    assert shards[0].asked == [(["a", "gone"], snapshot)]
    assert shards[1].asked == [(["b"], snapshot)]


def test_an_opening_row_among_the_first_pass_hits_is_read_by_its_id() -> None:
    def at(chunk_id: str, score: float, position: int) -> Hit:
        return _hit(chunk_id, score).model_copy(update={"position": position})

    # GIVEN a first pass whose BM25 list holds document a's opening row (position 0) but not b's
    shards = {0: _OpeningsStore({"a": [1.0, 0.0], "b": [0.0, 1.0]})}
    chosen = [at("a:3", 0.9, 3), at("b:2", 0.8, 2)]
    first = [_result(0, chosen, [at("a:0", 7.0, 0), at("b:1", 5.0, 1)])]
    # WHEN the openings are read
    vectors = opening_vectors(chosen, lambda shard: cast(VectorStore, shards[shard]), None, first)
    # THEN a's by its id (a point read), b's by document and position
    assert vectors == [[1.0, 0.0], [0.0, 1.0]]
    assert shards[0].by_id == [["a:0"]] and shards[0].asked == [(["b"], None)]


def _result(shard: int, dense: list[Hit], lexical: list[Hit], status: str = "ok") -> ShardResult:
    return ShardResult(shard=shard, status=status, hits=dense, lexical=lexical)  # type: ignore[arg-type]


def test_the_second_pass_replaces_dense_hits_and_keeps_bm25() -> None:
    # GIVEN a first pass on two shards and a second dense pass on both
    first = [
        _result(0, [_hit("a:0", 0.9)], [_hit("b:0", 7.0)]),
        _result(1, [_hit("c:0", 0.8, 1)], [_hit("d:0", 5.0, 1)]),
    ]
    second = [_result(0, [_hit("e:0", 0.95)], []), _result(1, [_hit("f:0", 0.7, 1)], [])]
    # WHEN they are combined
    combined = with_dense(first, second)
    # THEN dense hits come from the second pass, BM25 from the first, and fusion reads them as usual
    assert [[h.chunk_id for h in r.hits] for r in combined] == [["e:0"], ["f:0"]]
    assert [[h.chunk_id for h in r.lexical] for r in combined] == [["b:0"], ["d:0"]]
    fused = ConvexFuser().run(combined, 4).hits
    assert {h.doc_id for h in fused} == {"e", "f", "b", "d"}


def test_a_shard_missing_from_the_second_pass_keeps_the_first_pass_whole() -> None:
    first = [_result(0, [_hit("a:0", 0.9)], []), _result(1, [_hit("c:0", 0.8, 1)], [])]
    second = [_result(0, [_hit("e:0", 0.95)], []), _result(1, [], [], status="failed")]
    assert with_dense(first, second) == first


def test_a_shard_that_failed_the_first_pass_stays_failed() -> None:
    first = [_result(0, [_hit("a:0", 0.9)], []), _result(1, [], [], status="failed")]
    second = [_result(0, [_hit("e:0", 0.95)], [])]
    combined = with_dense(first, second)
    assert [r.status for r in combined] == ["ok", "failed"]
    assert [h.chunk_id for h in combined[0].hits] == ["e:0"]


# --- The Feedback step of the query workflow (in-memory shards, hashing embedder) ---------------------------------

_TOPICS = {
    "tides": "Ocean tides rise and fall with the pull of the Moon. Spring tides follow the full and new Moon.",
    "bees": "Honeybees dance to show where food is. The waggle dance gives the direction of the flowers.",
    "coffee": "Espresso needs a fine grind. Pressure pushes hot water through the coffee for about 25 seconds.",
    "volcano": "Volcanoes erupt where plates meet. Magma rises through the crust and cools into new rock.",
    "bread": "Bread rises because yeast makes gas. Kneading builds gluten that traps the gas in the dough.",
    "comets": "Comets are ice and dust. Near the Sun their ice turns to gas and a long tail streams away.",
}


@pytest.fixture
def feedback_setup(hashing_embedder, workflow_over):  # type: ignore[no-untyped-def]
    """Builds three in-memory shards holding ``_TOPICS`` and the workflow over them, with dense feedback on."""

    def build(enabled: bool = True, timeout_s: float = 8.0, budget_ms: float = 300.0):  # type: ignore[no-untyped-def]
        from shardrag.chunking import Chunker, Document
        from shardrag.config import Settings
        from shardrag.indexing import DocumentIndexer
        from shardrag.store.memory import InMemoryVectorStore

        settings = Settings(
            store={"shard_count": 3, "dimension": hashing_embedder.dimension, "search_timeout_s": timeout_s},
            retrieval={"feedback": {"enabled": enabled, "documents": 2, "weight": 1.0, "budget_ms": budget_ms}},
        )
        stores = [_Switchable(InMemoryVectorStore(shard=i, dimension=hashing_embedder.dimension)) for i in range(3)]
        # Small chunks, so that a document's opening chunk is not the chunk that matched.
        indexer = DocumentIndexer(
            chunker=Chunker(size=12, overlap=2), embedder=hashing_embedder, store_for=stores.__getitem__, shard_count=3
        )
        indexer.run([Document(doc_id=k, text=v, source=f"s3://b/{k}", version="1") for k, v in _TOPICS.items()])
        return workflow_over(settings, stores, _TOPICS), stores, settings

    return build


class _Switchable:
    """An in-memory shard whose dense search or opening read can be made to fail (a shard down mid-query)."""

    def __init__(self, inner):  # type: ignore[no-untyped-def]
        self._inner = inner
        self.fail_search = False
        self.fail_openings = False
        self.stall = threading.Event()
        self.stalled = False

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self._inner, name)

    def search(self, request):  # type: ignore[no-untyped-def]
        if self.stalled:
            self.stall.wait(30)
        if self.fail_search:
            raise ConnectionError("shard down")
        return self._inner.search(request)

    def opening_vectors(self, doc_ids, *, snapshot=None):  # type: ignore[no-untyped-def]
        if self.fail_openings:
            raise ConnectionError("shard down")
        return self._inner.opening_vectors(doc_ids, snapshot=snapshot)

    def dense_vectors(self, chunk_ids):  # type: ignore[no-untyped-def]
        if self.fail_openings:
            raise ConnectionError("shard down")
        return self._inner.dense_vectors(chunk_ids)


def _payload(state, name: str):  # type: ignore[no-untyped-def]
    """What the definition's state ``name`` hands its Lambda from ``state`` (its ``Parameters.Payload`` paths)."""
    import json
    from pathlib import Path

    definition = json.loads((Path(__file__).resolve().parents[2] / "statemachines" / "query.asl.json").read_text())
    template = definition["States"][name]["Parameters"]["Payload"]
    return json.loads(json.dumps({k.removesuffix(".$"): state[v.removeprefix("$.")] for k, v in template.items()}))


def _first_pass(workflow, body):  # type: ignore[no-untyped-def]
    """Embed, Route and the Parallel state's shard searches, as JSON crosses the state machine."""
    import json
    from datetime import UTC, datetime

    started_at = datetime.now(UTC).isoformat()
    embedded = json.loads(json.dumps(workflow.embed({"request": body, "started_at": started_at})))
    route = workflow.route({"request": embedded["request"], "vector": embedded["vector"]})
    shards = []
    for shard in route["shards"]:
        payload = {"shard": shard, "request": embedded["request"], "vector": embedded["vector"]}
        out = workflow.search({**payload, "sparse": embedded["sparse"]})
        shards.append({"shard": shard, "status": "ok", **out})
    state = {
        "request": embedded["request"],
        "vector": embedded["vector"],
        "shards": shards,
        "route": route,
        "started_at": embedded["started_at"],
        "timings_ms": embedded["timings_ms"],
        "feedback": embedded["feedback"],
    }
    return json.loads(json.dumps(state))


def test_hybrid_queries_run_feedback_as_configured_unless_the_request_says_otherwise(feedback_setup) -> None:  # type: ignore[no-untyped-def]
    workflow, _, _ = feedback_setup()
    marked = {m: workflow.resolve({"question": "moon", "mode": m}).feedback for m in ("dense", "bm25", "hybrid")}
    assert marked == {"dense": False, "bm25": False, "hybrid": True}
    assert workflow.resolve({"question": "moon", "feedback": False}).feedback is False
    off, _, _ = feedback_setup(enabled=False)
    assert off.resolve({"question": "moon", "mode": "hybrid"}).feedback is False
    assert off.resolve({"question": "moon", "mode": "hybrid", "feedback": True}).feedback is True
    for mode in ("dense", "bm25"):
        with pytest.raises(BadRequest, match="hybrid mode only"):
            workflow.resolve({"question": "moon", "mode": mode, "feedback": True})
    with pytest.raises(BadRequest):
        workflow.resolve({"question": "moon", "feedback": "yes"})


def test_the_second_round_searches_every_shard_with_the_query_moved_towards_the_top_documents_openings(
    feedback_setup,  # type: ignore[no-untyped-def]
) -> None:
    import json

    from shardrag.records import SearchRequest
    from shardrag.services import build_fusers
    from shardrag.vector_codec import unpack_vector

    workflow, stores, settings = feedback_setup()
    state = _first_pass(workflow, {"question": "why do tides follow the moon", "mode": "hybrid"})
    assert state["request"]["feedback"] is True
    first = [ShardResult.model_validate(r) for r in whole_chunk_ids(json.loads(json.dumps(state["shards"])))]
    # The expected second round, computed here from the stores directly.
    fused = build_fusers(settings)["hybrid"].run(first, settings.retrieval.fusion.depth).hits
    top_docs: list[tuple[str, int]] = []
    for hit in fused:
        if hit.doc_id not in {d for d, _ in top_docs}:
            top_docs.append((hit.doc_id, hit.shard))
    top_docs = top_docs[:2]
    openings = []
    for doc, shard in top_docs:
        (row,) = [r for r in stores[shard].stored_chunks(doc) if r.chunk.position == 0]
        openings.append(row.vector)
    q = unpack_vector(state["vector"])
    moved = [a + b for a, b in zip(q, [sum(col) / 2 for col in zip(*openings, strict=True)], strict=True)]
    norm = math.sqrt(sum(v * v for v in moved))
    moved = [v / norm for v in moved]
    # WHEN the Feedback step runs
    out = workflow.feedback(_payload(state, "Feedback"))
    # THEN it reports two documents fed back, and every shard's dense list is the search with the moved vector
    assert out["feedback"]["status"] == "ok" and out["feedback"]["documents"] == 2
    assert set(out) == {"request", "route", "started_at", "shards", "timings_ms", "feedback"}
    assert "feedback" in out["timings_ms"]
    for before, after in zip(state["shards"], out["shards"], strict=True):
        shard = after["shard"]
        expected = stores[shard].search(SearchRequest(vector=moved, top_k=len(after["hits"])))
        got = [(h["doc_id"], h["score"]) for h in after["hits"]]
        assert [d for d, _ in got] == [h.doc_id for h in expected]
        assert [s for _, s in got] == pytest.approx([h.score for h in expected], abs=1e-6)
        assert after["lexical"] == before["lexical"]  # BM25 is not searched again
    assert [r["hits"] for r in out["shards"]] != [r["hits"] for r in state["shards"]]
    # AND FuseAndGenerate answers from it and says so
    response = workflow.fuse_generate(_payload(out, "FuseAndGenerate"))
    assert response["feedback"] == {"status": "ok", "documents": 2, "reason": ""}
    assert response["hits"] and response["degraded"] is False


@pytest.mark.parametrize("failing", ["search", "openings"])
def test_a_shard_failing_in_the_second_round_keeps_the_first_pass_whole(feedback_setup, failing: str) -> None:  # type: ignore[no-untyped-def]
    import json

    workflow, stores, _ = feedback_setup()
    state = _first_pass(workflow, {"question": "yeast makes bread rise", "mode": "hybrid"})
    first = json.loads(json.dumps(state["shards"]))
    for store in stores:
        setattr(store, f"fail_{failing}", True)
    out = workflow.feedback(_payload(state, "Feedback"))
    assert out["feedback"]["status"] == "failed" and "ConnectionError" in out["feedback"]["reason"]
    assert [(r["hits"], r["lexical"]) for r in out["shards"]] == [(r["hits"], r["lexical"]) for r in first]
    # The answer is the first pass's, not degraded: every shard did answer it.
    response = workflow.fuse_generate(_payload(out, "FuseAndGenerate"))
    assert response["degraded"] is False and response["feedback"]["status"] == "failed"


def test_a_snapshot_too_old_to_search_again_keeps_the_first_pass(feedback_setup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shardrag.workflow as workflow_module
    from shardrag.visibility import MemoryEpochClock

    workflow, _, _ = feedback_setup()
    workflow._snapshot = MemoryEpochClock().snapshot  # type: ignore[attr-defined]
    workflow._snapshot_max_age_s = 45.0  # type: ignore[attr-defined]
    state = _first_pass(workflow, {"question": "comets near the sun", "mode": "hybrid"})
    real = workflow_module.time.time
    monkeypatch.setattr(workflow_module.time, "time", lambda: real() + 60)
    out = workflow.feedback(_payload(state, "Feedback"))
    assert out["feedback"]["status"] == "failed" and "snapshot" in out["feedback"]["reason"]
    assert [r["hits"] for r in out["shards"]] == [r["hits"] for r in state["shards"]]


def test_an_invocation_failure_caught_by_the_state_machine_is_reported_and_the_first_pass_answers(
    feedback_setup,  # type: ignore[no-untyped-def]
) -> None:
    workflow, _, _ = feedback_setup()
    state = _first_pass(workflow, {"question": "espresso grind pressure", "mode": "hybrid"})
    # What the Catch of the Feedback state leaves: the state it was given, the error in $.feedback.
    state["feedback"] = {"Error": "States.Timeout", "Cause": "Task timed out"}
    response = workflow.fuse_generate(_payload(state, "FuseAndGenerate"))
    assert response["feedback"] == {"status": "failed", "documents": 0, "reason": "States.Timeout"}
    assert response["hits"][0]["doc_id"] == "coffee"


def test_a_second_round_past_its_deadline_keeps_the_first_pass(feedback_setup) -> None:  # type: ignore[no-untyped-def]
    workflow, stores, _ = feedback_setup(timeout_s=0.3)
    state = _first_pass(workflow, {"question": "magma rises through the crust", "mode": "hybrid"})
    stores[1].stalled = True  # a shard that does not answer (the store's own deadline not reached)
    try:
        out = workflow.feedback(_payload(state, "Feedback"))
    finally:
        stores[1].stall.set()
    assert out["feedback"]["status"] == "failed" and "longer than 0.3 s" in out["feedback"]["reason"]
    assert [r["hits"] for r in out["shards"]] == [r["hits"] for r in state["shards"]]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    down_first=st.sets(st.integers(0, 2), max_size=2),
    fail_second=st.sets(st.integers(0, 2)),
    fail_openings=st.sets(st.integers(0, 2)),
    question=st.sampled_from(["tides and the moon", "waggle dance", "yeast gas gluten", "ice tail sun"]),
)
def test_whatever_fails_in_either_round_the_answer_keeps_every_first_pass_list_or_replaces_exactly_the_dense_ones(
    feedback_setup,  # type: ignore[no-untyped-def]
    down_first: set[int],
    fail_second: set[int],
    fail_openings: set[int],
    question: str,
) -> None:
    import json

    workflow, stores, _ = feedback_setup()
    state = _first_pass(workflow, {"question": question, "mode": "hybrid", "generate": False})
    for r in state["shards"]:
        if r["shard"] in down_first:  # the Parallel state's Catch turned this branch into a failed result
            state["shards"][r["shard"]] = {"shard": r["shard"], "status": "failed", "error": "ShardSearchFailed"}
    first = json.loads(json.dumps(state["shards"]))
    for i, store in enumerate(stores):
        store.fail_search = i in fail_second
        store.fail_openings = i in fail_openings
    out = workflow.feedback(_payload(state, "Feedback"))
    answered = {r["shard"] for r in first if r["status"] == "ok"}
    status = out["feedback"]["status"]
    # Every shard keeps its status and its BM25 list; dense lists are all the second round's or all the first's.
    assert [(r["shard"], r["status"], r.get("lexical") or []) for r in out["shards"]] == [
        (r["shard"], r["status"], r.get("lexical") or []) for r in first
    ]
    if status == "ok":
        assert not (answered & fail_second)
    else:
        assert [r.get("hits") or [] for r in out["shards"]] == [r.get("hits") or [] for r in first]
        assert status == "empty" or answered & fail_second or fail_openings
    response = workflow.fuse_generate(_payload(out, "FuseAndGenerate"))
    assert response["degraded"] is bool(down_first)
    assert response["shards"]["failed"] == sorted(down_first)


@pytest.mark.parametrize("budget_ms", [300.0, 0.0])
def test_a_query_already_past_its_budget_skips_the_round_and_the_first_pass_answers(
    feedback_setup,
    budget_ms: float,  # type: ignore[no-untyped-def]
) -> None:
    from datetime import UTC, datetime, timedelta

    workflow, _, _ = feedback_setup(budget_ms=budget_ms)
    state = _first_pass(workflow, {"question": "hot water through coffee", "mode": "hybrid"})
    # The execution started 2 s ago: the shards were queueing.
    state["started_at"] = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    out = workflow.feedback(_payload(state, "Feedback"))
    if budget_ms:
        assert out["feedback"]["status"] == "skipped" and "budget 300 ms" in out["feedback"]["reason"]
        assert [r["hits"] for r in out["shards"]] == [r["hits"] for r in state["shards"]]
        assert workflow.fuse_generate(_payload(out, "FuseAndGenerate"))["feedback"]["status"] == "skipped"
    else:  # 0: no budget
        assert out["feedback"]["status"] == "ok"


def test_a_request_that_asks_for_feedback_gets_it_past_the_budget(feedback_setup) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    workflow, _, _ = feedback_setup()
    state = _first_pass(workflow, {"question": "hot water through coffee", "mode": "hybrid", "feedback": True})
    state["started_at"] = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    assert workflow.feedback(_payload(state, "Feedback"))["feedback"]["status"] == "ok"
