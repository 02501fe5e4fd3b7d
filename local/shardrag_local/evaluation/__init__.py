"""Retrieval evaluation of ShardRAG through its real path (S3 ingestion, the HTTP query API), with baselines.

``python -m shardrag_local.evaluation`` (or ``shardrag eval``, ``make eval``) runs it on a BEIR folder.
"""

from shardrag_local.evaluation.dataset import BeirDataset, BeirDocument
from shardrag_local.evaluation.metrics import (
    MetricSummary,
    dedupe_ranking,
    evaluate,
    ndcg_at_k,
    rank_by_score,
    recall_at_k,
    reciprocal_rank_at_k,
)

__all__ = [
    "BeirDataset",
    "BeirDocument",
    "MetricSummary",
    "dedupe_ranking",
    "evaluate",
    "ndcg_at_k",
    "rank_by_score",
    "recall_at_k",
    "reciprocal_rank_at_k",
]
