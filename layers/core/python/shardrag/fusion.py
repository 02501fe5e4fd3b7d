"""The Fuse stage: merge shard results into one ranking.

Each modality is merged across shards first (dense cosine scores and BM25 scores are each comparable across
shards: same model, same corpus-wide statistics), so a merged list equals what one index holding every chunk
would return. Only then does hybrid fusion normalise and combine them, never per shard: a shard's min and max
say nothing about the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

import numpy as np
from shardrag.errors import ShardsUnavailable
from shardrag.records import Hit, Record, ShardResult

Modality = Literal["dense", "lexical"]


class FusedHits(Record):
    hits: list[Hit]
    searched: list[int]
    failed: list[int]
    skipped: list[int]

    @property
    def degraded(self) -> bool:
        return bool(self.failed)


class Fuser(Protocol):
    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits: ...


def _outcome(results: Sequence[ShardResult], hits: list[Hit]) -> FusedHits:
    searched = sorted(r.shard for r in results if r.status == "ok")
    failed = sorted(r.shard for r in results if r.status == "failed")
    skipped = sorted(r.shard for r in results if r.status == "skipped")
    if not searched:
        detail = f"shards {failed} failed" if failed else "no shard was searched"
        raise ShardsUnavailable(f"no shard answered: {detail}")
    return FusedHits(hits=hits, searched=searched, failed=failed, skipped=skipped)


def merge_modality(results: Iterable[ShardResult], modality: Modality) -> list[Hit]:
    """One modality's hits from every shard, best first, each chunk once (with its best score).

    A chunk may be reported twice (replicated placement, a retried branch). Ties are broken by chunk id so that
    the ranking does not depend on which shard answered first.
    """
    best: dict[str, Hit] = {}
    for result in results:
        for hit in result.hits if modality == "dense" else result.lexical:
            kept = best.get(hit.chunk_id)
            if kept is None:
                best[hit.chunk_id] = hit
            elif hit.score > kept.score:
                best[hit.chunk_id] = _richer(hit, kept)
            else:
                best[hit.chunk_id] = _richer(kept, hit)
    return sorted(best.values(), key=lambda h: (-h.score, h.chunk_id))


def _richer(primary: Hit, other: Hit) -> Hit:
    """``primary`` (whose score counts), with ``other``'s text when only ``other`` carries it.

    One chunk can arrive as several copies: from both modalities, from replicas, once within a shard's text
    depth and once in its ids-only tail. Which copy wins on score must never decide whether the answer keeps
    the chunk's text (a text-less copy winning once dropped cited passages from generation)."""
    if primary.text or not other.text:
        return primary
    return primary.model_copy(
        update={"text": other.text, "source": other.source, "title": other.title, "metadata": other.metadata}
    )


def _records(*lists: Sequence[Hit]) -> dict[str, Hit]:
    """Each chunk once across ``lists``, keeping a copy that carries text if any does."""
    records: dict[str, Hit] = {}
    for hits in lists:
        for hit in hits:
            kept = records.get(hit.chunk_id)
            records[hit.chunk_id] = hit if kept is None else _richer(kept, hit)
    return records


class ScoreMergeFuser:
    """One modality, merged by score: the merged top-k equals the top-k of one index holding all chunks."""

    def __init__(self, modality: Modality = "dense") -> None:
        self._modality: Modality = modality

    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits:
        return _outcome(results, merge_modality(results, self._modality)[:top_k])


Normalisation = Literal["zscore", "minmax"]


def _normalised(hits: Sequence[Hit], how: Normalisation) -> tuple[dict[str, float], float]:
    """Each candidate's normalised score, and the score a chunk missing from this list gets (the list's floor:
    not having been retrieved is no better than the worst candidate that was)."""
    if not hits:
        return {}, 0.0
    scores = np.array([h.score for h in hits], dtype=np.float64)
    if how == "zscore":
        spread = float(scores.std())
        normal = (scores - scores.mean()) / spread if spread > 0 else np.zeros_like(scores)
    else:
        low, span = float(scores.min()), float(scores.max() - scores.min())
        normal = (scores - low) / span if span > 0 else np.ones_like(scores)
    return {h.chunk_id: float(v) for h, v in zip(hits, normal, strict=True)}, float(normal.min())


class ConvexFuser:
    """Hybrid: ``alpha · dense + (1 - alpha) · bm25`` per chunk, each modality normalised over its top ``depth``
    merged candidates; a chunk missing from one list gets that list's lowest normalised score.

    Chosen by the worst case over SciFact test, NFCorpus dev and mtrag-mini (``bench/retrieval_study.py``,
    BENCHMARKS.md): at the shipped BM25 (lexical units), z-score with alpha 0.5 over 100 candidates per modality
    ends at most 0.0034 below an untuned doc-level fusion of exact chunk-dense and bm25s on any corpus, min-max's
    best at that depth 0.0046 below; RRF's best anywhere in the grid 0.0089 below. Convex fusion keeps how far
    apart scores are, not only their order.
    """

    def __init__(self, alpha: float = 0.6, *, depth: int = 100, normalisation: Normalisation = "zscore") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._alpha = alpha
        self._depth = depth
        self._normalisation: Normalisation = normalisation

    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits:
        dense = merge_modality(results, "dense")[: self._depth]
        lexical = merge_modality(results, "lexical")[: self._depth]
        dense_norm, dense_floor = _normalised(dense, self._normalisation)
        lexical_norm, lexical_floor = _normalised(lexical, self._normalisation)
        records = _records(dense, lexical)
        scores = {
            cid: self._alpha * dense_norm.get(cid, dense_floor)
            + (1 - self._alpha) * lexical_norm.get(cid, lexical_floor)
            for cid in records
        }
        ranked = sorted(records, key=lambda cid: (-scores[cid], cid))[:top_k]
        return _outcome(results, [_with_score(records[cid], scores[cid]) for cid in ranked])


def _with_score(hit: Hit, score: float) -> Hit:
    return hit.model_copy(update={"score": round(score, 6)})


class RrfFuser:
    """Hybrid by reciprocal rank: ``Σ 1 / (k + rank)`` over the two merged lists (scale-free, order only), each cut
    at its top ``depth`` like :class:`ConvexFuser` (None: whatever the shards returned)."""

    def __init__(self, k: int = 60, *, depth: int | None = None) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        if depth is not None and depth < 1:
            raise ValueError("depth must be at least 1")
        self._k = k
        self._depth = depth

    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits:
        scores: dict[str, float] = {}
        ranked_lists = [
            merge_modality(results, "lexical")[: self._depth],
            merge_modality(results, "dense")[: self._depth],
        ]
        for ranking in ranked_lists:
            for rank, hit in enumerate(ranking, start=1):
                scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (self._k + rank)
        records = _records(*ranked_lists)
        ranked = sorted(records, key=lambda cid: (-scores[cid], cid))[:top_k]
        return _outcome(results, [_with_score(records[cid], scores[cid]) for cid in ranked])
