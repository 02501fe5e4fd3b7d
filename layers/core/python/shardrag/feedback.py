"""Dense pseudo-relevance feedback: a second dense search with the query moved towards what the first hybrid pass
ranked best (Rocchio, positive feedback only). Not in the query path yet (issue 14: it needs a second round of
shard searches in the state machine); ``bench/fusion_variants_study.py`` measures it offline through these classes.

The first pass is the ordinary hybrid one (dense and BM25 per shard, merged and fused). Each of the first few
documents of that fused ranking feeds back its *opening* chunk (position 0: the title and the start of the text,
what the document is about) rather than the chunk that matched, which only restates the query: measured, the
opening gives the better worst case. Their vectors are averaged and added to the query vector,
``q' = normalise(q + weight · mean(v_1..v_m))``; the dense side is searched again with ``q'`` on every shard and
fused with the first pass's BM25 lists, which feedback does not change.

Chosen offline by the worst case over SciFact test, NFCorpus dev and mtrag-mini (``bench/fusion_variants_study.py``
``prf-grid``, BENCHMARKS.md "Retrieval defaults"): with the shipped ``ConvexFuser`` on both passes it is the one
change measured that lifts NFCorpus dev above the README's reference fusion without losing on the other two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from shardrag.records import Hit, ShardResult
from shardrag.store.base import VectorStore

__all__ = ["DenseFeedback", "opening_vectors", "with_dense"]


class DenseFeedback:
    """Rocchio on the dense query vector from the first ``documents`` distinct documents of a fused ranking.

    ``weight`` scales the mean of the feedback vectors against the (unit) query vector; both are unit vectors, so
    at 1.0 the two count equally.
    """

    def __init__(self, *, documents: int = 2, weight: float = 1.0) -> None:
        if documents < 1:
            raise ValueError("documents must be at least 1")
        if not 0.0 < weight <= 10.0:
            raise ValueError("weight must be in (0, 10]")
        self.documents = documents
        self.weight = weight

    def feedback_hits(self, fused: Sequence[Hit]) -> list[Hit]:
        """The hits whose vectors feed back: the best fused hit of each of the first ``documents`` documents."""
        chosen: list[Hit] = []
        seen: set[str] = set()
        for hit in fused:
            if hit.doc_id in seen:
                continue
            seen.add(hit.doc_id)
            chosen.append(hit)
            if len(chosen) == self.documents:
                break
        return chosen

    def run(self, query: Sequence[float], feedback: Sequence[Sequence[float]]) -> list[float]:
        """The expanded query vector (unit length); ``query`` itself when there is nothing to feed back."""
        q = np.asarray(query, dtype=np.float64)
        if not len(feedback):
            return [float(v) for v in q]
        vectors = np.asarray(feedback, dtype=np.float64)
        if vectors.ndim != 2 or vectors.shape[1] != q.shape[0]:
            raise ValueError(f"feedback vectors must have dimension {q.shape[0]}, got shape {vectors.shape}")
        moved = q + self.weight * vectors.mean(axis=0)
        norm = float(np.linalg.norm(moved))
        if norm == 0.0:
            return [float(v) for v in q]
        return [float(v) for v in moved / norm]


def opening_vectors(hits: Sequence[Hit], store_for: Callable[[int], VectorStore]) -> list[list[float]]:
    """The dense vector of each hit's document's opening chunk (position 0), read from the hit's shard; a
    document whose opening the store cannot give back with its vector feeds back nothing."""
    vectors: list[list[float]] = []
    for hit in hits:
        rows = store_for(hit.shard).stored_chunks(hit.doc_id, positions=(0, 0))
        found = next((row.vector for row in rows if row.vector), None)
        if found is not None:
            vectors.append(found)
    return vectors


def with_dense(first: Sequence[ShardResult], second: Sequence[ShardResult]) -> list[ShardResult]:
    """The first pass's results with each shard's dense hits replaced by the second pass's.

    Dense scores are only comparable across shards when every shard was searched with the same vector, so the
    second pass is used only if every shard that answered the first answered it too; otherwise the first pass is
    kept whole (the answer loses the feedback, not exactness).
    """
    answered = {r.shard: r for r in second if r.status == "ok"}
    if any(r.status == "ok" and r.shard not in answered for r in first):
        return list(first)
    return [r.model_copy(update={"hits": answered[r.shard].hits}) if r.status == "ok" else r for r in first]
