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


#: Where the BM25 side of hybrid fusion is read: ``document``, a chunk takes its document's best normalised
#: BM25 score among the lexical candidates (BM25 ranks lexical units, a document or a run of its chunks, and only a
#: unit's first row carries its weights, so the lexical list names units, not the chunks the dense side picks);
#: ``chunk``, only the chunk's own row counts.
LexicalScope = Literal["document", "chunk"]


def _document_best(hits: Sequence[Hit], normal: dict[str, float]) -> dict[str, float]:
    """Per document, the best normalised score of its candidates."""
    best: dict[str, float] = {}
    for hit in hits:
        value = normal[hit.chunk_id]
        if value > best.get(hit.doc_id, -np.inf):
            best[hit.doc_id] = value
    return best


class ConvexFuser:
    """Hybrid: ``alpha · dense + (1 - alpha) · bm25`` per chunk, each modality normalised over its top ``depth``
    merged candidates; a chunk missing from one list gets that list's lowest normalised score. With
    ``lexical_scope`` "document" (the default) a chunk's BM25 side is its document's best lexical candidate's:
    BM25 scores lexical units (``shardrag.lexical_units``) whose weights only the unit's first row carries, so
    the lexical list holds ``depth`` distinct units and their evidence reaches every chunk the dense side finds.

    Chosen by the worst case over SciFact test, NFCorpus dev and mtrag-mini (``bench/retrieval_study.py`` and
    ``bench/document_fusion_study.py``, BENCHMARKS.md "Retrieval defaults"). Convex fusion keeps how far apart
    scores are, not only their order.
    """

    def __init__(
        self,
        alpha: float = 0.6,
        *,
        depth: int = 100,
        normalisation: Normalisation = "zscore",
        lexical_scope: LexicalScope = "document",
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must be in [0, 1]")
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._alpha = alpha
        self._depth = depth
        self._normalisation: Normalisation = normalisation
        self._lexical_scope: LexicalScope = lexical_scope

    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits:
        dense = merge_modality(results, "dense")[: self._depth]
        lexical = merge_modality(results, "lexical")[: self._depth]
        dense_norm, dense_floor = _normalised(dense, self._normalisation)
        lexical_norm, lexical_floor = _normalised(lexical, self._normalisation)
        records = _records(dense, lexical)
        if self._lexical_scope == "document":
            by_document = _document_best(lexical, lexical_norm)
            lexical_of = {cid: by_document.get(hit.doc_id, lexical_floor) for cid, hit in records.items()}
        else:
            lexical_of = {cid: lexical_norm.get(cid, lexical_floor) for cid in records}
        scores = {
            cid: self._alpha * dense_norm.get(cid, dense_floor) + (1 - self._alpha) * lexical_of[cid] for cid in records
        }
        ranked = sorted(records, key=lambda cid: (-scores[cid], cid))[:top_k]
        return _outcome(results, [_with_score(records[cid], scores[cid]) for cid in ranked])


def _with_score(hit: Hit, score: float) -> Hit:
    return hit.model_copy(update={"score": round(score, 6)})


class RrfFuser:
    """Hybrid by reciprocal rank: ``Σ 1 / (k + rank)`` over the two merged lists (scale-free, order only), each cut
    at its top ``depth`` like :class:`ConvexFuser` (None: whatever the shards returned). ``lexical_scope`` as
    there: "document" gives a chunk its document's best lexical rank."""

    def __init__(self, k: int = 60, *, depth: int | None = None, lexical_scope: LexicalScope = "document") -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        if depth is not None and depth < 1:
            raise ValueError("depth must be at least 1")
        self._k = k
        self._depth = depth
        self._lexical_scope: LexicalScope = lexical_scope

    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits:
        lexical = merge_modality(results, "lexical")[: self._depth]
        dense = merge_modality(results, "dense")[: self._depth]
        records = _records(lexical, dense)
        lexical_rank = {hit.chunk_id: rank for rank, hit in enumerate(lexical, start=1)}
        if self._lexical_scope == "document":
            by_document: dict[str, int] = {}
            for hit in lexical:
                by_document.setdefault(hit.doc_id, lexical_rank[hit.chunk_id])
            lexical_rank = {cid: by_document[hit.doc_id] for cid, hit in records.items() if hit.doc_id in by_document}
        scores = {cid: 1.0 / (self._k + rank) for cid, rank in lexical_rank.items()}
        for rank, hit in enumerate(dense, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (self._k + rank)
        ranked = sorted(records, key=lambda cid: (-scores.get(cid, 0.0), cid))[:top_k]
        return _outcome(results, [_with_score(records[cid], scores.get(cid, 0.0)) for cid in ranked])
