"""Ranking metrics at document level, with the definitions BEIR reports (pytrec_eval / trec_eval).

- nDCG@k: gain = the judged grade (linear, as trec_eval's ``ndcg_cut``), discount ``log2(rank + 1)``; the ideal
  ranking is the query's judged grades sorted high to low, cut at k.
- recall@k: relevant documents (grade > 0) in the first k, over all relevant documents of the query.
- MRR@k: 1 / rank of the first relevant document within the first k, else 0.

A ranking is a list of document ids, best first. A document that appears twice counts once, at its first (best)
position: for chunk hits that is exactly "a document's rank is that of its best chunk". Documents without a
judgment have gain 0. Queries with no relevant judgment are left out of the means (trec_eval cannot score them
either); a judged query the system returned nothing for scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: query id -> document id -> graded relevance (BEIR qrels).
Qrels = Mapping[str, Mapping[str, int]]
#: query id -> document ids, best first.
Run = Mapping[str, Sequence[str]]


def dedupe_ranking(doc_ids: Iterable[str]) -> list[str]:
    """Keep each document's first occurrence, in order (a document ranks where its best chunk ranks)."""
    seen: set[str] = set()
    ranking: list[str] = []
    for doc_id in doc_ids:
        if doc_id not in seen:
            seen.add(doc_id)
            ranking.append(doc_id)
    return ranking


def rank_by_score(scores: Mapping[str, float]) -> list[str]:
    """Document ids by score, high to low; ties broken by document id in *descending* string order.

    That is trec_eval's own order (it re-sorts a run by score, then docno descending), so a baseline ranked here
    and scored by pytrec_eval would get the same figure.
    """
    return [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def ndcg_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """nDCG@k with linear gains (trec_eval ``ndcg_cut.k``); 0.0 when nothing is relevant."""
    _check_k(k)
    ideal_gains = sorted((g for g in judgments.values() if g > 0), reverse=True)[:k]
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(ideal_gains))
    if ideal == 0:
        return 0.0
    gained = sum(max(judgments.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(dedupe_ranking(ranking)[:k]))
    return gained / ideal


def recall_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents (grade > 0) found in the first k; 0.0 when nothing is relevant."""
    _check_k(k)
    relevant = {doc for doc, grade in judgments.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(dedupe_ranking(ranking)[:k])) / len(relevant)


def reciprocal_rank_at_k(ranking: Sequence[str], judgments: Mapping[str, int], k: int) -> float:
    """1 / rank of the first relevant document within the first k, else 0.0."""
    _check_k(k)
    for i, doc in enumerate(dedupe_ranking(ranking)[:k]):
        if judgments.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"cut-off k must be at least 1, got {k}")


@dataclass(frozen=True)
class MetricSummary:
    """Means over the evaluated queries. ``recall`` maps each cut-off to its mean; a cut-off deeper than the
    rankings the system could return is absent, not estimated."""

    ndcg_at_10: float
    mrr_at_10: float
    recall: dict[int, float]
    queries: int
    #: Judged queries left out because none of their judgments is relevant.
    skipped_queries: int
    #: Mean number of distinct documents per ranking (how deep the rankings really are).
    mean_depth: float

    def as_dict(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {"ndcg@10": round(self.ndcg_at_10, 4)}
        out.update({f"recall@{k}": round(v, 4) for k, v in sorted(self.recall.items())})
        out["mrr@10"] = round(self.mrr_at_10, 4)
        out.update(queries=self.queries, skipped_queries=self.skipped_queries, mean_depth=round(self.mean_depth, 1))
        return out


def evaluate(run: Run, qrels: Qrels, *, recall_cutoffs: Sequence[int] = (10, 100)) -> MetricSummary:
    """Score ``run`` against ``qrels``: mean nDCG@10, MRR@10 and recall at each cut-off over judged queries."""
    ndcg: list[float] = []
    mrr: list[float] = []
    recall: dict[int, list[float]] = {k: [] for k in recall_cutoffs}
    depth: list[int] = []
    skipped = 0
    for query_id, judgments in qrels.items():
        if not any(grade > 0 for grade in judgments.values()):
            skipped += 1
            continue
        ranking = dedupe_ranking(run.get(query_id, ()))
        depth.append(len(ranking))
        ndcg.append(ndcg_at_k(ranking, judgments, 10))
        mrr.append(reciprocal_rank_at_k(ranking, judgments, 10))
        for k in recall_cutoffs:
            recall[k].append(recall_at_k(ranking, judgments, k))
    return MetricSummary(
        ndcg_at_10=_mean(ndcg),
        mrr_at_10=_mean(mrr),
        recall={k: _mean(v) for k, v in recall.items()},
        queries=len(ndcg),
        skipped_queries=skipped,
        mean_depth=_mean([float(d) for d in depth]),
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
