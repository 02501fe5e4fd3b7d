"""Metric functions of the evaluation harness against hand-computed values (BEIR / trec_eval definitions)."""

from __future__ import annotations

import math

import pytest
from shardrag_local.evaluation.metrics import (
    dedupe_ranking,
    evaluate,
    ndcg_at_k,
    rank_by_score,
    recall_at_k,
    reciprocal_rank_at_k,
)

# log2(3) = 1.5849625; log2(4) = 2; log2(5) = 2.3219281
GRADED = {"a": 2, "b": 1}


def test_ndcg_uses_linear_graded_gains_and_log2_discount() -> None:
    # GIVEN an unjudged document first, then a (grade 2) and b (grade 1)
    # WHEN nDCG@10 is computed
    # THEN DCG = 0/1 + 2/log2(3) + 1/log2(4) = 1.7618595, IDCG = 2/1 + 1/log2(3) = 2.6309298
    assert ndcg_at_k(["x", "a", "b"], GRADED, 10) == pytest.approx(0.6696718, abs=1e-6)


def test_ndcg_perfect_ranking_is_one_and_order_of_grades_matters() -> None:
    assert ndcg_at_k(["a", "b"], GRADED, 10) == pytest.approx(1.0)
    # b first: (1 + 2/log2(3)) / (2 + 1/log2(3)) = 2.2618595 / 2.6309298
    assert ndcg_at_k(["b", "a"], GRADED, 10) == pytest.approx(0.8597186, abs=1e-6)


def test_ndcg_cutoff_applies_to_the_ranking_and_to_the_ideal() -> None:
    three = {"a": 1, "b": 1, "c": 1}
    # IDCG@2 = 1 + 1/log2(3) = 1.6309298; DCG@2 of [a, x] = 1
    assert ndcg_at_k(["a", "x", "b"], three, 2) == pytest.approx(1 / 1.6309298, abs=1e-6)
    # a relevant document below the cut-off earns nothing
    assert ndcg_at_k(["x", "y", "a"], three, 2) == 0.0


def test_duplicates_count_once_at_their_best_rank() -> None:
    # GIVEN chunk hits where document a appears twice (two chunks) before b
    hits = ["a", "a", "b", "a"]
    # THEN the document ranking is [a, b] and every metric sees that
    assert dedupe_ranking(hits) == ["a", "b"]
    assert ndcg_at_k(hits, GRADED, 10) == pytest.approx(1.0)
    assert recall_at_k(hits, GRADED, 2) == pytest.approx(1.0)  # b is at document rank 2, not chunk rank 3
    assert reciprocal_rank_at_k(["x", "x", "b"], GRADED, 2) == pytest.approx(0.5)


def test_recall_counts_only_positive_grades() -> None:
    judgments = {"a": 1, "b": 1, "c": 0}
    assert recall_at_k(["a", "x", "c"], judgments, 3) == pytest.approx(0.5)
    assert recall_at_k(["x", "a"], judgments, 1) == 0.0
    assert recall_at_k(["b", "a"], judgments, 2) == pytest.approx(1.0)


def test_mrr_is_the_reciprocal_rank_of_the_first_relevant_within_k() -> None:
    assert reciprocal_rank_at_k(["x", "y", "a", "b"], GRADED, 10) == pytest.approx(1 / 3)
    ranking = [f"x{i}" for i in range(10)] + ["a"]
    assert reciprocal_rank_at_k(ranking, GRADED, 10) == 0.0


def test_missing_qrels_give_zero_gain_and_no_relevant_gives_zero() -> None:
    assert ndcg_at_k(["x", "y"], GRADED, 10) == 0.0
    assert ndcg_at_k(["a"], {"a": 0}, 10) == 0.0
    assert recall_at_k(["a"], {}, 10) == 0.0


@pytest.mark.parametrize("metric", [ndcg_at_k, recall_at_k, reciprocal_rank_at_k])
def test_cutoff_must_be_positive(metric: object) -> None:
    with pytest.raises(ValueError):
        metric(["a"], GRADED, 0)  # type: ignore[operator]


def test_ties_break_by_document_id_descending_like_trec_eval() -> None:
    assert rank_by_score({"d1": 0.5, "d2": 0.5, "d3": 0.9, "d0": 0.1}) == ["d3", "d2", "d1", "d0"]


def test_evaluate_means_over_judged_queries_and_skips_unjudgeable_ones() -> None:
    # GIVEN q1 perfect, q2 judged but absent from the run, q3 with only a zero-grade judgment
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}
    run = {"q1": ["a", "a", "z"], "q3": ["c"]}
    summary = evaluate(run, qrels, recall_cutoffs=(1, 10))
    # THEN q2 scores 0 (a miss, not a skip), q3 is skipped, and the means are over q1 and q2
    assert summary.queries == 2 and summary.skipped_queries == 1
    assert summary.ndcg_at_10 == pytest.approx(0.5)
    assert summary.mrr_at_10 == pytest.approx(0.5)
    assert summary.recall == {1: pytest.approx(0.5), 10: pytest.approx(0.5)}
    assert summary.mean_depth == pytest.approx(1.0)  # [a, z] and [] -> 2 and 0 documents
    assert summary.as_dict()["recall@1"] == 0.5


def test_evaluate_on_a_graded_example_matches_the_hand_computation() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 1}}
    summary = evaluate({"q": ["c", "x", "a"]}, qrels)
    dcg = 1 / math.log2(2) + 2 / math.log2(4)  # c at 1, a at 3 = 2.0
    idcg = 2 + 1 / math.log2(3) + 1 / math.log2(4)  # 3.1309298
    assert summary.ndcg_at_10 == pytest.approx(dcg / idcg)
    assert summary.ndcg_at_10 == pytest.approx(0.6387879, abs=1e-6)
    assert summary.recall[10] == pytest.approx(2 / 3)
    assert summary.mrr_at_10 == pytest.approx(1.0)
