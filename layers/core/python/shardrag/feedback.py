"""Dense pseudo-relevance feedback: a second dense search with the query moved towards what the first hybrid pass
ranked best (Rocchio, positive feedback only). In the query path it is the ``Feedback`` state of
``statemachines/query.asl.json``, between the shard searches and FuseAndGenerate, for hybrid queries unless the
request or ``retrieval.feedback.enabled`` says otherwise.

The first pass is the ordinary hybrid one (dense and BM25 per shard, merged and fused). Each of the first few
documents of that fused ranking feeds back its *opening* chunk (position 0: the title and the start of the text,
what the document is about) rather than the chunk that matched, which only restates the query: measured, the
opening gives the better worst case. Their vectors are averaged and added to the query vector,
``q' = normalise(q + weight · mean(v_1..v_m))``; the dense side is searched again with ``q'`` on every shard that
answered and fused with the first pass's BM25 lists, which feedback does not change.

Feedback only ever improves an answer that the first pass already has: if any part of the second round fails
(a shard down or busy, an opening chunk unreadable) the first pass is kept whole and the query is answered from
it (:class:`FeedbackPass` reports why), and a query that reaches the round already past its time budget skips it
(``QueryWorkflow.feedback``: optional work shed under load).

Chosen offline by the worst case over SciFact test, NFCorpus dev and mtrag-mini (``bench/fusion_variants_study.py``
``prf-shipped``, BENCHMARKS.md "Retrieval defaults"): with the shipped ``ConvexFuser`` on both passes it is the one
change measured that lifts NFCorpus dev above the README's reference fusion without losing on the other two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Literal, TypeVar

import numpy as np
from shardrag.fusion import Fuser
from shardrag.records import Hit, Record, SearchRequest, ShardResult, Snapshot
from shardrag.search import ShardSearcher
from shardrag.store.base import VectorStore

__all__ = ["DenseFeedback", "FeedbackOutcome", "FeedbackPass", "opening_vectors", "with_dense"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


def opening_vectors(
    hits: Sequence[Hit],
    store_for: Callable[[int], VectorStore],
    snapshot: Snapshot | None = None,
    known: Sequence[ShardResult] = (),
) -> list[list[float]]:
    """The dense vector of each hit's document's opening chunk (position 0) as ``snapshot`` sees it, read from the
    hit's shard, in the hits' order; a document whose opening is not found feeds back nothing.

    ``known``: the first pass's results. An opening row among their hits was found under the same snapshot, so it
    is read by its id, a point read; often it is there (a document of one lexical unit has its opening row as its
    BM25 hit). The others are found by document and position, a filtered query (one per shard).
    """
    openings = {
        (h.shard, h.doc_id): h.chunk_id
        for result in known
        if result.status == "ok"
        for h in (*result.hits, *result.lexical)
        if h.position == 0
    }
    found: dict[tuple[int, str], list[float]] = {}
    by_id: dict[int, dict[str, str]] = {}  # shard -> opening chunk id -> document
    for hit in hits:
        if (chunk_id := openings.get((hit.shard, hit.doc_id))) is not None:
            by_id.setdefault(hit.shard, {})[chunk_id] = hit.doc_id
    for shard, documents in by_id.items():
        for chunk_id, vector in store_for(shard).dense_vectors(list(documents)).items():
            found[(shard, documents[chunk_id])] = vector
    by_document: dict[int, list[str]] = {}
    for hit in hits:
        if (hit.shard, hit.doc_id) not in found:
            by_document.setdefault(hit.shard, []).append(hit.doc_id)
    for shard, doc_ids in by_document.items():
        for doc_id, vector in store_for(shard).opening_vectors(doc_ids, snapshot=snapshot).items():
            found[(shard, doc_id)] = vector
    return [found[(hit.shard, hit.doc_id)] for hit in hits if (hit.shard, hit.doc_id) in found]


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


class FeedbackOutcome(Record):
    """The shard results FuseAndGenerate fuses, and what the second round did."""

    results: list[ShardResult]
    #: ``ok``: dense lists from the expanded query; ``empty``: nothing to feed back; ``failed``: the first pass
    #: kept whole (``reason`` says why); ``skipped``: not tried (the query was already past its time budget).
    status: Literal["ok", "empty", "failed", "skipped"]
    documents: int = 0
    reason: str = ""
    took_ms: float = 0.0


class FeedbackPass:
    """The second round of a hybrid query: fuse the first pass, expand the query vector from its top documents'
    openings, search the dense side of every shard that answered again (concurrently), swap the dense lists.

    ``request`` (of :meth:`run`) is the first pass's shard request (depth, filter, snapshot) without its BM25
    side; only its vector is replaced. ``timeout_s`` bounds the whole round (the opening read and the searches):
    past it the first pass answers, so a slow shard costs the query at most that much more, well inside the
    Feedback state's own timeout.
    """

    def __init__(
        self,
        feedback: DenseFeedback,
        *,
        fuser: Fuser,
        searcher: ShardSearcher,
        store_for: Callable[[int], VectorStore],
        fusion_depth: int,
        workers: int,
        timeout_s: float | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        self._feedback = feedback
        self._fuser = fuser
        self._searcher = searcher
        self._store_for = store_for
        self._fusion_depth = fusion_depth
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="feedback")

    def run(self, vector: Sequence[float], first: Sequence[ShardResult], request: SearchRequest) -> FeedbackOutcome:
        started = time.perf_counter()

        def outcome(
            status: Literal["ok", "empty", "failed"],
            results: Sequence[ShardResult],
            documents: int = 0,
            reason: str = "",
        ) -> FeedbackOutcome:
            took = round((time.perf_counter() - started) * 1000, 3)
            return FeedbackOutcome(
                results=list(results), status=status, documents=documents, reason=reason, took_ms=took
            )

        answered = [r.shard for r in first if r.status == "ok"]
        if not answered:
            # FuseAndGenerate reports the query's shards as unavailable; nothing here can help.
            return outcome("empty", first)
        fused = self._fuser.run(first, self._fusion_depth).hits
        chosen = self._feedback.feedback_hits(fused)
        deadline = None if self._timeout_s is None else started + self._timeout_s

        def within_deadline(futures: list[Future[_T]]) -> list[_T]:
            remaining = None if deadline is None else max(0.0, deadline - time.perf_counter())
            _, pending = wait(futures, timeout=remaining)
            if pending:
                raise TimeoutError(f"the feedback round took longer than {self._timeout_s} s")
            return [f.result() for f in futures]

        try:
            (vectors,) = within_deadline(
                [self._pool.submit(opening_vectors, chosen, self._store_for, request.snapshot, first)]
            )
            if not vectors:
                return outcome("empty", first)
            moved = request.model_copy(update={"vector": self._feedback.run(vector, vectors), "sparse": None})
            second = within_deadline([self._pool.submit(self._searcher.run, s, moved, dense=True) for s in answered])
        except Exception as exc:  # the first pass stands on its own: feedback may add to it, never fail it
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("dense feedback skipped, the first pass answers: %s", reason)
            return outcome("failed", first, documents=len(chosen), reason=reason[:500])
        return outcome("ok", with_dense(first, second), documents=len(vectors))
