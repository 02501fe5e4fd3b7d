"""Hybrid fusion: each modality merged across shards first, then normalised and combined."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shardrag.errors import ShardsUnavailable
from shardrag.fusion import ConvexFuser, RrfFuser, ScoreMergeFuser, merge_modality
from shardrag.records import Hit, ShardResult


def _hit(chunk_id: str, score: float, shard: int) -> Hit:
    return Hit(chunk_id=chunk_id, doc_id=chunk_id.split(":")[0], score=score, text=chunk_id, shard=shard)


def _shard(shard: int, dense: dict[str, float], lexical: dict[str, float]) -> ShardResult:
    return ShardResult(
        shard=shard,
        status="ok",
        hits=[_hit(c, s, shard) for c, s in sorted(dense.items(), key=lambda p: -p[1])],
        lexical=[_hit(c, s, shard) for c, s in sorted(lexical.items(), key=lambda p: -p[1])],
    )


RESULTS = [
    _shard(0, {"a": 0.90, "b": 0.50}, {"b": 12.0, "c": 3.0}),
    _shard(1, {"d": 0.80, "e": 0.20}, {"e": 9.0, "d": 1.0}),
]


def test_each_modality_is_merged_across_shards_by_score() -> None:
    assert [h.chunk_id for h in merge_modality(RESULTS, "dense")] == ["a", "d", "b", "e"]
    assert [h.chunk_id for h in merge_modality(RESULTS, "lexical")] == ["b", "e", "c", "d"]
    assert [h.chunk_id for h in ScoreMergeFuser("lexical").run(RESULTS, 2).hits] == ["b", "e"]


def test_alpha_one_is_dense_order_and_alpha_zero_is_bm25_order() -> None:
    for normalisation in ("zscore", "minmax"):
        # (Below the dense list's floor, a chunk only BM25 found ties the dense list's last one.)
        dense = ConvexFuser(1.0, normalisation=normalisation).run(RESULTS, 3)  # type: ignore[arg-type]
        assert [h.chunk_id for h in dense.hits] == ["a", "d", "b"]
        lexical = ConvexFuser(0.0, normalisation=normalisation).run(RESULTS, 3)  # type: ignore[arg-type]
        assert [h.chunk_id for h in lexical.hits] == ["b", "e", "c"]


def test_convex_fusion_rewards_chunks_both_modalities_rank_well() -> None:
    fused = ConvexFuser(0.5, normalisation="minmax").run(RESULTS, 5)
    # b: dense (0.5-0.2)/0.7, bm25 1.0; a: dense 1.0, bm25 missing -> the list's floor 0.
    scores = {h.chunk_id: h.score for h in fused.hits}
    assert fused.hits[0].chunk_id == "b"
    assert scores["b"] == pytest.approx(0.5 * 0.3 / 0.7 + 0.5 * 1.0, abs=1e-6)
    assert scores["a"] == pytest.approx(0.5, abs=1e-6)


def test_normalisation_happens_after_the_merge_not_per_shard() -> None:
    # Per shard, shard 1's weak best dense hit would normalise to 1.0 and tie shard 0's strong one.
    results = [_shard(0, {"x": 0.95, "y": 0.10}, {}), _shard(1, {"z": 0.30, "w": 0.10}, {})]
    fused = ConvexFuser(0.6).run(results, 4)
    assert [h.chunk_id for h in fused.hits] == ["x", "z", "w", "y"]
    assert fused.hits[0].score > fused.hits[1].score


def test_fusion_depth_bounds_the_candidates_of_each_modality() -> None:
    fused = ConvexFuser(0.5, depth=1).run(RESULTS, 10)
    assert {h.chunk_id for h in fused.hits} == {"a", "b"}


def test_rrf_depth_bounds_the_candidates_of_each_modality() -> None:
    # Cut at 2: dense a, d; BM25 b, e. d and b each appear once, a and e too: ties broken by chunk id.
    fused = RrfFuser(k=60, depth=2).run(RESULTS, 10)
    assert {h.chunk_id for h in fused.hits} == {"a", "b", "d", "e"}
    with pytest.raises(ValueError):
        RrfFuser(depth=0)


def test_rrf_uses_ranks_only() -> None:
    fused = RrfFuser(k=60).run(RESULTS, 2)
    # b: dense rank 3 + bm25 rank 1; d: dense rank 2 + bm25 rank 4; e: 4 + 2; a: 1 only.
    assert [h.chunk_id for h in fused.hits] == ["b", "d"]
    assert fused.hits[0].score == pytest.approx(1 / 63 + 1 / 61, abs=1e-6)


def test_fusers_report_shard_outcomes_and_refuse_when_nothing_answered() -> None:
    failed = [*RESULTS, ShardResult(shard=2, status="failed", error="x"), ShardResult(shard=3, status="skipped")]
    fused = ConvexFuser().run(failed, 3)
    assert fused.degraded and fused.failed == [2] and fused.skipped == [3] and fused.searched == [0, 1]
    with pytest.raises(ShardsUnavailable):
        ConvexFuser().run([ShardResult(shard=0, status="failed")], 3)
    with pytest.raises(ValueError):
        ConvexFuser(1.5)


def test_empty_lists_fuse_to_no_hits() -> None:
    assert ConvexFuser().run([_shard(0, {}, {})], 5).hits == []


@pytest.mark.parametrize("fuser", [ConvexFuser(0.6), ConvexFuser(0.6, normalisation="minmax"), RrfFuser()])
def test_a_text_less_copy_never_replaces_a_copy_with_text(fuser: ConvexFuser | RrfFuser) -> None:
    # One chunk, within shard 0's text depth lexically but in its ids-only tail densely (the review found 4 of 60
    # hybrid top-10 hits empty this way, and generation skipped them).
    with_text = Hit(chunk_id="k", doc_id="k", score=9.0, text="the passage", source="s3://b/k", shard=0)
    ids_only = Hit(chunk_id="k", doc_id="k", score=0.7, shard=0)
    results = [
        ShardResult(shard=0, status="ok", hits=[_hit("a", 0.9, 0), ids_only], lexical=[with_text, _hit("a", 1.0, 0)])
    ]
    fused = {h.chunk_id: h for h in fuser.run(results, 2).hits}
    assert fused["k"].text == "the passage" and fused["k"].source == "s3://b/k"


def test_a_replica_without_text_does_not_hide_the_copy_with_text() -> None:
    results = [
        ShardResult(shard=0, status="ok", hits=[Hit(chunk_id="k", doc_id="k", score=0.5, shard=0)]),
        ShardResult(shard=1, status="ok", hits=[Hit(chunk_id="k", doc_id="k", score=0.5, text="kept", shard=1)]),
    ]
    [merged] = merge_modality(results, "dense")
    assert merged.text == "kept"


# A lexical unit's weights are on its first row only ("p:0"), so BM25 names the unit, the dense side the chunk.
UNITS = [
    _shard(0, {"p:2": 0.90, "q:0": 0.80}, {"p:0": 10.0, "s:0": 1.0}),
    _shard(1, {"r:0": 0.30, "r:1": 0.20}, {"r:0": 2.0}),
]


@pytest.mark.parametrize("normalisation", ["zscore", "minmax"])
def test_document_scope_gives_a_chunk_its_documents_bm25_score(normalisation: str) -> None:
    document = ConvexFuser(0.5, normalisation=normalisation).run(UNITS, 10)  # type: ignore[arg-type]
    chunk = ConvexFuser(0.5, normalisation=normalisation, lexical_scope="chunk").run(UNITS, 10)  # type: ignore[arg-type]
    # p:2 is the best dense chunk of the best BM25 document; per chunk it would get BM25's floor.
    assert document.hits[0].chunk_id == "p:2"
    scores = {h.chunk_id: h.score for h in document.hits}
    assert scores["p:2"] > {h.chunk_id: h.score for h in chunk.hits}["p:2"]
    # Every chunk of r shares r's BM25 score: r:1 differs from r:0 only by its dense score.
    assert scores["r:0"] > scores["r:1"]
    assert scores["p:2"] > scores["p:0"]  # the same BM25 side, p:2 is the better dense chunk


def test_rrf_document_scope_gives_a_chunk_its_documents_best_bm25_rank() -> None:
    fused = RrfFuser(k=60).run(UNITS, 10)
    scores = {h.chunk_id: h.score for h in fused.hits}
    # p:2: dense rank 1, and p's BM25 rank 1 (through p:0).
    assert fused.hits[0].chunk_id == "p:2"
    assert scores["p:2"] == pytest.approx(1 / 61 + 1 / 61, abs=1e-6)
    assert scores["r:1"] == pytest.approx(1 / 64 + 1 / 62, abs=1e-6)
    per_chunk = {h.chunk_id: h.score for h in RrfFuser(k=60, lexical_scope="chunk").run(UNITS, 10).hits}
    assert per_chunk["p:2"] == pytest.approx(1 / 61, abs=1e-6)


_SCORES = st.floats(0.01, 20.0, allow_nan=False)
_CHUNKS = st.sampled_from([f"{d}:{c}" for d in "abcde" for c in range(3)])


@settings(max_examples=200, deadline=None)
@given(
    dense=st.dictionaries(_CHUNKS, _SCORES, max_size=10),
    lexical=st.dictionaries(_CHUNKS, _SCORES, max_size=10),
    alpha=st.floats(0.0, 1.0),
    normalisation=st.sampled_from(["zscore", "minmax"]),
)
def test_document_scope_scores_each_chunk_by_its_documents_best_bm25_candidate(
    dense: dict[str, float], lexical: dict[str, float], alpha: float, normalisation: str
) -> None:
    results = [_shard(0, dense, lexical)]
    document = ConvexFuser(alpha, normalisation=normalisation).run(results, 100)  # type: ignore[arg-type]
    chunk = ConvexFuser(alpha, normalisation=normalisation, lexical_scope="chunk").run(results, 100)  # type: ignore[arg-type]
    by_document = {h.chunk_id: h.score for h in document.hits}
    by_chunk = {h.chunk_id: h.score for h in chunk.hits}
    assert by_document.keys() == by_chunk.keys() == dense.keys() | lexical.keys()
    for cid, score in by_document.items():
        # Never below its own BM25 side: the document's best candidate is at least the chunk's own (or the floor).
        assert score >= by_chunk[cid] - 1e-5
        # Chunks of one document with the same dense side score the same.
        for other, other_score in by_document.items():
            if other.split(":")[0] == cid.split(":")[0] and dense.get(other) == dense.get(cid):
                assert other_score == pytest.approx(score, abs=1e-5)
