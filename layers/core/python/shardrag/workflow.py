"""The query workflow's steps: what each state of ``statemachines/query.asl.json`` asks of the core.

Each step takes the state's input payload (validated into a typed record) and returns the state's result as
JSON-able data. Handlers are thin wrappers around these methods; the local runtime and the tests call the same
handlers through the real state machine.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, ValidationError
from shardrag.caching.answers import AnswerCaching
from shardrag.config import TENANT_PATTERN
from shardrag.errors import BadRequest, Forbidden, ShardBusy, WiringError
from shardrag.feedback import FeedbackPass
from shardrag.filters import FilterCompiler
from shardrag.fusion import FusedHits, Fuser
from shardrag.generation.base import Generator
from shardrag.passages import UnitPassages
from shardrag.records import (
    MAX_HIT_TEXT_CHARS,
    Answer,
    Hit,
    Record,
    RoutePlan,
    SearchRequest,
    ShardResult,
    Snapshot,
    SparseVector,
    whole_chunk_ids,
)
from shardrag.request import Mode, parse_query_request
from shardrag.rerank import Reranker, RerankFailed
from shardrag.routing import Router
from shardrag.search import ShardSearcher
from shardrag.vector_codec import PackedVector, pack_vector

log = logging.getLogger(__name__)

#: Step Functions caps every state's input and output at 256 KiB.
STATE_LIMIT_BYTES = 256 * 1024
#: Share of it that shard hits may take in the Parallel state's output. The rest holds the resolved request
#: (question <= 2,000 characters, filter expression <= ``MAX_FILTER_EXPR_BYTES``), the query vector and BM25
#: terms, route and timings: ``tests/unit/test_state_budget.py`` checks the whole state of the largest valid
#: request against ``STATE_LIMIT_BYTES``.
PAYLOAD_HIT_BUDGET_BYTES = 160 * 1024
#: The compiled filter travels in every state after Embed; a longer one is a 400 in both runtimes (before, it
#: went on to fail the execution with ``States.DataLimitExceeded`` deployed, a 500).
MAX_FILTER_EXPR_BYTES = 8 * 1024
#: Ids-only hits are ~100-130 bytes (chunk id, doc id, score, position, shard): the most the Parallel output
#: holds. Longer ids are still safe: each shard cuts its deepest hits to its byte share (``_within_budget``).
IDS_ONLY_MAX_HITS = PAYLOAD_HIT_BUDGET_BYTES // 130
#: Hybrid: a shard returns this multiple of its expected share of the fused candidates.
HYBRID_SHARD_OVERFETCH = 1.5


class ResolvedQuery(Record):
    """The request after validation, with defaults applied and filters compiled."""

    question: str
    top_k: int
    #: Hits with text each shard returns per modality.
    candidates: int
    #: Hits each shard returns per modality (``>= candidates``; the rest carry ids and scores for fusion).
    depth: int = 0
    generate: bool
    include_text: bool = True
    mode: Mode = "hybrid"
    #: Centroid routing: shards to probe (``None``: the configured default or adaptive).
    probe: int | None = None
    #: The caller's tenant in multi-tenant mode (already part of ``filter_expr``), else empty.
    tenant: str = ""
    filter_expr: str = ""
    #: The answer-cache key read at Embed (the index version included); empty when answers are not cached.
    cache_key: str = ""
    #: What every search and passage read of this query sees, read once at Embed (``shardrag.visibility``):
    #: one version of each document, whatever commits while the shards are searched. ``None``: every row.
    snapshot: Snapshot | None = None
    #: Hybrid with dense feedback on: the state machine runs the Feedback state (a second dense round) before
    #: FuseAndGenerate.
    feedback: bool = False
    #: The request asked for feedback itself (``"feedback": true``): it runs whatever time the query has taken.
    feedback_asked: bool = False


class Caller(Record):
    """Who asks, as the API front saw it (API Gateway from the caller's identity; never the request body)."""

    tenant: str = ""


class EmbedInput(Record):
    request: Any
    caller: Caller = Caller()
    started_at: str | None = None


class RouteInput(Record):
    request: ResolvedQuery
    vector: PackedVector


class SearchInput(Record):
    shard: int
    request: ResolvedQuery
    vector: PackedVector
    sparse: SparseVector | None = None
    #: Every shard this query searches (the Route stage's choice): hybrid sizes each shard's share by it.
    searched: list[int] | None = None


class FeedbackInput(Record):
    request: ResolvedQuery
    vector: PackedVector
    shards: Annotated[list[ShardResult], BeforeValidator(whole_chunk_ids)]
    route: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


class FuseInput(Record):
    request: ResolvedQuery
    shards: Annotated[list[ShardResult], BeforeValidator(whole_chunk_ids)]
    route: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    #: What the Feedback state did (its ``FeedbackOutcome`` without the results), the error Step Functions caught
    #: when its invocation failed (``Error``, ``Cause``), or ``None`` when it did not run.
    feedback: dict[str, Any] | None = None


def _feedback_report(state: dict[str, Any] | None) -> dict[str, Any] | None:
    """The response's ``feedback``: ``None`` when the query had no second round."""
    if state is None:
        return None
    if "Error" in state:
        # The invocation itself failed (timeout, crash): the state machine went on with the first pass.
        log.warning("dense feedback failed (%s): the first pass answers", state.get("Error"))
        return {"status": "failed", "documents": 0, "reason": str(state.get("Error", ""))[:200]}
    return {
        "status": str(state.get("status", "")),
        "documents": int(state.get("documents", 0)),
        "reason": str(state.get("reason", ""))[:500],
    }


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


_R = TypeVar("_R", bound=Record)


def _parse(model: type[_R], payload: Any) -> _R:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        # A payload the state machine built is malformed only through a wiring bug or a hand-made event.
        raise WiringError(f"malformed {model.__name__} payload: {exc.error_count()} error(s)") from None


def hit_text_budget(shard_count: int, candidates: int, tail: int = 0) -> int:
    """Characters of text each shard hit may carry so that the Parallel output stays under the payload limit
    (``tail``: further hits per shard that carry ids and scores only)."""
    available = PAYLOAD_HIT_BUDGET_BYTES - shard_count * tail * 200
    per_hit = available // max(1, shard_count * candidates)
    # ~400 bytes per hit go to ids, scores and metadata; text is mostly ASCII in practice.
    return max(200, min(MAX_HIT_TEXT_CHARS, per_hit - 400))


class QueryWorkflow:
    """The four steps, built once per container from the configured stages."""

    def __init__(
        self,
        *,
        embed: Callable[[str], list[float]],
        lexical_query: Callable[..., SparseVector],
        router: Router,
        searcher: ShardSearcher,
        fusers: Mapping[Mode, Fuser],
        default_mode: Mode,
        fusion_depth: int = 100,
        generator: Callable[[], Generator],
        reranker: Callable[[], Reranker] | None = None,
        rerank_candidates: int = 100,
        rerank_top_n: int | None = None,
        filter_compiler: FilterCompiler,
        default_top_k: int,
        min_candidates: int,
        shard_count: int,
        multi_tenant: bool = False,
        answers: AnswerCaching | None = None,
        passages: UnitPassages | None = None,
        snapshot: Callable[[], Snapshot] | None = None,
        snapshot_max_age_s: float | None = None,
        feedback: FeedbackPass | None = None,
        feedback_default: bool = True,
        feedback_budget_ms: float = 0.0,
    ) -> None:
        """``answers``: the answer cache (``None``: off). ``passages``: moves ``bm25`` hits onto the chunk of their
        lexical unit that matches best (``None``: a hit shows the unit's first chunk). ``snapshot``: the epoch
        clock's current snapshot, read once per query (``None``: queries see every row). ``snapshot_max_age_s``:
        a shard search refuses a snapshot older than this (:class:`ShardBusy`, a 429): rows it may see are deleted
        ``ingestion.retire_grace_s`` after the commit that retired them. ``feedback``: the second, dense round of
        hybrid queries (``None``: off), run when the request asks or, if it does not say, ``feedback_default``."""
        self._feedback = feedback
        self._feedback_default = feedback_default
        self._feedback_budget_ms = feedback_budget_ms
        self._snapshot = snapshot
        self._snapshot_max_age_s = snapshot_max_age_s
        self._answers = answers
        self._passages = passages
        self._embed = embed
        self._lexical_query = lexical_query
        self._router = router
        self._searcher = searcher
        self._fusers = dict(fusers)
        self._default_mode: Mode = default_mode
        self._fusion_depth = fusion_depth
        self._generator = generator
        self._reranker = reranker
        self._rerank_candidates = rerank_candidates
        self._rerank_top_n = rerank_top_n
        self._filters = filter_compiler
        self._default_top_k = default_top_k
        self._min_candidates = min_candidates
        self._shard_count = shard_count
        self._multi_tenant = multi_tenant

    def _tenant(self, caller: Caller) -> str:
        if not self._multi_tenant:
            return ""
        if not re.fullmatch(TENANT_PATTERN, caller.tenant):
            # No tenant means no identity to scope by: refusing is the only answer that cannot leak.
            raise Forbidden("the caller's identity carries no valid tenant")
        return caller.tenant

    def resolve(self, raw_request: Any, caller: Caller | None = None) -> ResolvedQuery:
        request = parse_query_request(raw_request)
        tenant = self._tenant(caller or Caller())
        top_k = request.resolved_top_k(self._default_top_k)
        mode: Mode = request.mode or self._default_mode
        candidates = max(top_k, self._min_candidates)
        depth = candidates
        if mode == "hybrid":
            # Fusion normalises over the global top ``fusion_depth`` of each modality; a shard holds about
            # 1/shard_count of it under hash placement, fetched with a margin (beyond ``candidates``: ids only).
            share = math.ceil(self._fusion_depth * HYBRID_SHARD_OVERFETCH / self._shard_count)
            depth = max(candidates, min(self._fusion_depth, share))
        if request.probe is not None and request.probe > self._shard_count:
            raise BadRequest(f"probe must be between 1 and {self._shard_count} (the shard count), got {request.probe}")
        lists = 2 if mode == "hybrid" else 1
        if not request.include_text and depth * lists * self._shard_count > IDS_ONLY_MAX_HITS:
            raise BadRequest(
                f"top_k {top_k} in {mode} mode over {self._shard_count} shards exceeds the state payload limit; "
                f"use top_k <= {IDS_ONLY_MAX_HITS // (self._shard_count * lists)}"
            )
        if request.feedback and mode != "hybrid":
            raise BadRequest(f"feedback applies to hybrid mode only, not {mode}")
        wants_feedback = request.feedback if request.feedback is not None else self._feedback_default
        filter_expr = self._filters.run(request.filters, tenant=tenant or None)
        if len(filter_expr.encode("utf-8")) > MAX_FILTER_EXPR_BYTES:
            raise BadRequest(f"filters are too large: they compile to more than {MAX_FILTER_EXPR_BYTES} bytes")
        return ResolvedQuery(
            question=request.question,
            top_k=top_k,
            candidates=candidates,
            depth=depth,
            generate=request.generate,
            include_text=request.include_text,
            mode=mode,
            probe=request.probe,
            tenant=tenant,
            filter_expr=filter_expr,
            feedback=mode == "hybrid" and wants_feedback and self._feedback is not None,
            feedback_asked=bool(request.feedback),
        )

    @property
    def caches_answers(self) -> bool:
        return self._answers is not None

    def embed(self, payload: Any) -> dict[str, Any]:
        """Resolve and embed the request; with the answer cache on, look the answer up first: a hit comes back
        as ``cached`` (the state machine then ends with it), a miss carries its key on to FuseAndGenerate."""
        started = time.perf_counter()
        step = _parse(EmbedInput, payload)
        query = self.resolve(step.request, step.caller)
        started_at = step.started_at or datetime.now(UTC).isoformat()
        if self._answers is not None and (key := self._answers.key(query.model_dump())) is not None:
            cached = self._answers.get(key)
            if cached is not None:
                lookup_ms = _ms(started)
                timings = {"cache": lookup_ms, "total": _elapsed_since(started_at) if step.started_at else lookup_ms}
                # The state machine ends with ``cached`` next (CachedAnswer): nothing else need travel.
                return {
                    "request": {},
                    "vector": [],
                    "sparse": None,
                    "started_at": started_at,
                    "timings_ms": {"cache": lookup_ms},
                    "cached": {**cached, "cache": "hit", "timings_ms": timings},
                    "feedback": None,
                }
            query = query.model_copy(update={"cache_key": key})
        if self._snapshot is not None:
            # After the cache key: the index version already keys answers, the snapshot only filters rows.
            taken = self._snapshot().model_copy(update={"taken_at": time.time()})
            query = query.model_copy(update={"snapshot": taken})
        vector = self._embed(query.question)
        sparse = None
        if query.mode != "dense":
            # Multi-tenant: the IDF of the caller's tenant's corpus (``lexical_query(text, tenant=...)``).
            sparse = (
                self._lexical_query(query.question, tenant=query.tenant)
                if self._multi_tenant
                else self._lexical_query(query.question)
            )
        return {
            "request": query.model_dump(),
            "vector": pack_vector(vector),
            "sparse": sparse.model_dump() if sparse else None,
            "started_at": started_at,
            "timings_ms": {"embed": _ms(started)},
            "cached": None,
            "feedback": None,
        }

    def route(self, payload: Any) -> dict[str, Any]:
        started = time.perf_counter()
        step = _parse(RouteInput, payload)
        plan: RoutePlan = self._router.run(step.vector, step.request.probe)
        return {
            "selected": plan.selected_map(),
            "shards": plan.shards,
            "probed": len(plan.shards),
            "took_ms": _ms(started),
        }

    def _snapshot_too_old(self, query: ResolvedQuery) -> str | None:
        """Why the query's snapshot may no longer be searched, if so: rows it sees may be deleted by now."""
        if query.snapshot is None or self._snapshot_max_age_s is None:
            return None
        age = time.time() - query.snapshot.taken_at
        if age <= self._snapshot_max_age_s:
            return None
        return f"the query's snapshot is {age:.0f} s old (limit {self._snapshot_max_age_s:.0f} s)"

    def _depth(self, query: ResolvedQuery, searched: int) -> int:
        """Hits each shard returns per modality."""
        depth = max(query.depth, query.candidates)
        if query.mode == "hybrid" and searched < self._shard_count:
            # Routing chose fewer shards: each holds a larger share of the fused candidates.
            depth = max(
                depth, min(self._fusion_depth, math.ceil(self._fusion_depth * HYBRID_SHARD_OVERFETCH / searched))
            )
        return depth

    def search(self, payload: Any) -> dict[str, Any]:
        step = _parse(SearchInput, payload)
        query = step.request
        if (too_old := self._snapshot_too_old(query)) is not None:
            # An answer could miss rows this snapshot sees: retry afresh.
            raise ShardBusy(too_old)
        searched = len(step.searched) if step.searched else self._shard_count
        depth = self._depth(query, searched)
        result = self._searcher.run(
            step.shard,
            SearchRequest(
                vector=step.vector,
                top_k=depth,
                filter_expr=query.filter_expr,
                sparse=step.sparse,
                snapshot=query.snapshot,
            ),
            dense=query.mode != "bm25",
            lexical=query.mode != "dense",
        )
        if query.mode == "bm25" and query.include_text and self._passages is not None and step.sparse is not None:
            shown_first = self._passages.run(
                step.shard, result.lexical[: query.candidates], step.sparse, query.snapshot
            )
            result = result.model_copy(update={"lexical": shown_first + result.lexical[query.candidates :]})
        hits, lexical = self._fit(query, searched, depth, result)
        return {"hits": hits, "lexical": lexical, "took_ms": result.took_ms}

    def _fit(
        self, query: ResolvedQuery, searched: int, depth: int, result: ShardResult
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A shard's hits as the state carries them: text on the first ``candidates`` of each list, cut to the
        shard's share of the payload budget; ids and scores only below (or everywhere without ``include_text``)."""
        lists = (query.mode == "hybrid") + 1
        if query.include_text:
            tail = max(0, depth - query.candidates) * lists
            budget = hit_text_budget(searched, query.candidates * lists, tail)

            def shown(found: list[Hit]) -> list[Hit]:
                return [
                    h.model_copy(update={"text": h.text[:budget]}) if rank < query.candidates else _ids_only(h)
                    for rank, h in enumerate(found)
                ]
        else:

            def shown(found: list[Hit]) -> list[Hit]:
                return [_ids_only(h) for h in found]

        hits, lexical = _within_budget(
            [h.compact() for h in shown(result.hits)],
            [h.compact() for h in shown(result.lexical)],
            PAYLOAD_HIT_BUDGET_BYTES // searched,
        )
        if len(hits) + len(lexical) < len(result.hits) + len(result.lexical):
            log.warning(
                "shard %d: hits cut to %d + %d to fit the state payload limit",
                result.shard,
                len(hits),
                len(lexical),
            )
        return hits, lexical

    def feedback(self, payload: Any) -> dict[str, Any]:
        """The Feedback state: a hybrid query's second, dense round (``shardrag.feedback``). Returns the state
        FuseAndGenerate reads, with the shard results replaced; whatever goes wrong keeps the first pass."""
        step = _parse(FeedbackInput, payload)
        query = step.request
        out = {
            "request": query.model_dump(),
            "route": step.route,
            "started_at": step.started_at,
        }
        searched = [r.shard for r in step.shards if r.status != "skipped"]

        def first_pass_only(status: str, reason: str) -> dict[str, Any]:
            log.log(logging.WARNING if status == "failed" else logging.INFO, "dense feedback %s: %s", status, reason)
            return {
                **out,
                "shards": [_compact_result(r) for r in step.shards],
                "timings_ms": step.timings_ms,
                "feedback": {"status": status, "documents": 0, "reason": reason, "took_ms": 0.0},
            }

        elapsed_ms = _elapsed_since(step.started_at) if step.started_at else 0.0
        if self._feedback_budget_ms and elapsed_ms > self._feedback_budget_ms and not query.feedback_asked:
            # Optional work shed under load: the shards are queueing, and this round would queue behind them.
            why = f"the query had taken {elapsed_ms:.0f} ms (feedback budget {self._feedback_budget_ms:.0f} ms)"
            return first_pass_only("skipped", why)
        if (too_old := self._snapshot_too_old(query)) is not None:
            return first_pass_only("failed", too_old)
        if self._feedback is None or query.mode != "hybrid":
            # A configuration that differs from Embed's, or a hand-made event.
            return first_pass_only("failed", "dense feedback is not configured here, or the query is not hybrid")
        depth = self._depth(query, len(searched) or self._shard_count)
        request = SearchRequest(vector=step.vector, top_k=depth, filter_expr=query.filter_expr, snapshot=query.snapshot)
        outcome = self._feedback.run(step.vector, step.shards, request)
        shards: list[dict[str, Any]] = []
        for result in outcome.results:
            if outcome.status == "ok" and result.status == "ok":
                hits, lexical = self._fit(query, len(searched), depth, result)
                shards.append({**_compact_result(result, hits=False), "hits": hits, "lexical": lexical})
            else:
                shards.append(_compact_result(result))
        timings = {**step.timings_ms, "feedback": outcome.took_ms}
        return {**out, "shards": shards, "timings_ms": timings, "feedback": outcome.model_dump(exclude={"results"})}

    def _rerank(
        self, reranker: Reranker, query: ResolvedQuery, pool: list[Hit], fused: list[Hit]
    ) -> tuple[list[Hit], dict[str, Any]]:
        """Reorder the candidates that carry text; if the reranker fails, keep the fused order and say so (an
        answer from good retrieval beats no answer)."""
        top_n = min(query.top_k, self._rerank_top_n or query.top_k)
        try:
            ranked = reranker.run(query.question, pool, top_n)
            return ranked, {"model": reranker.name, "status": "ok", "candidates": len(pool)}
        except RerankFailed as exc:
            log.warning("rerank failed (%s): %s; keeping the fused order", exc.reason, exc.message)
            return fused[: query.top_k], {"model": reranker.name, "status": "failed", "reason": exc.reason}

    def fuse_generate(self, payload: Any) -> dict[str, Any]:
        step = _parse(FuseInput, payload)
        query = step.request
        started = time.perf_counter()
        reranking = self._reranker is not None and query.include_text
        depth = max(query.top_k, self._rerank_candidates) if reranking else query.top_k
        fused: FusedHits = self._fusers[query.mode].run(step.shards, depth)
        fuse_ms = _ms(started)
        hits, rerank, rerank_ms = fused.hits[: query.top_k], None, 0.0
        # Only candidates that carry text can be reranked: each shard sends text for its first ``candidates``
        # hits per modality and ids for the rest of a hybrid fusion's depth, so the fused pool mixes both.
        pool = [h for h in fused.hits if h.text.strip()][: self._rerank_candidates]
        if reranking and self._reranker is not None and pool:
            started = time.perf_counter()
            hits, rerank = self._rerank(self._reranker(), query, pool, fused.hits)
            rerank_ms = _ms(started)
        answer: Answer | None = None
        generate_ms = 0.0
        if query.generate:
            started = time.perf_counter()
            # A hybrid candidate from a shard's ids-only tail has no text to ground an answer on.
            answer = self._generator().run(query.question, [h for h in hits if h.text])
            generate_ms = _ms(started)
        shard_ms = {str(r.shard): r.took_ms for r in step.shards if r.status == "ok"}
        timings = {
            **step.timings_ms,
            "route": float(step.route.get("took_ms", 0.0)),
            "search": max(shard_ms.values(), default=0.0),
            "fuse": fuse_ms,
            "rerank": rerank_ms,
            "generate": generate_ms,
        }
        if step.started_at:
            timings["total"] = _elapsed_since(step.started_at)
        response = {
            "answer": answer.text if answer else None,
            "citations": [c.model_dump() for c in answer.citations] if answer else [],
            "hits": [_public_hit(rank, hit) for rank, hit in enumerate(hits, start=1)],
            "degraded": fused.degraded,
            "rerank": rerank,
            "feedback": _feedback_report(step.feedback),
            "shards": {"searched": fused.searched, "failed": fused.failed, "skipped": fused.skipped},
            "timings_ms": {**timings, "shards": shard_ms},
            "model": answer.model if answer else None,
            "cache": "miss",
        }
        if self._answers is not None and query.cache_key:
            self._answers.put(query.cache_key, response)
        return response


def _within_budget(
    first: list[dict[str, Any]], second: list[dict[str, Any]], budget: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Drop the lowest-ranked hits (from the longer list first) until both lists serialise within ``budget``
    bytes: long object keys as chunk ids must degrade the deepest ranks, never fail the query with
    ``States.DataLimitExceeded``."""
    sizes = [[len(json.dumps(h).encode()) + 2 for h in hits] for hits in (first, second)]
    total = sum(map(sum, sizes))
    keep = [len(first), len(second)]
    while total > budget and any(keep):
        which = 0 if keep[0] >= keep[1] else 1
        keep[which] -= 1
        total -= sizes[which][keep[which]]
    return first[: keep[0]], second[: keep[1]]


def _compact_result(result: ShardResult, *, hits: bool = True) -> dict[str, Any]:
    """A shard result as the Parallel state carries it (:meth:`Hit.compact` hits, defaults left out)."""
    out = result.model_dump(exclude={"hits", "lexical"}, exclude_defaults=True)
    if hits:
        out["hits"] = [h.compact() for h in result.hits]
        out["lexical"] = [h.compact() for h in result.lexical]
    return out


def _ids_only(hit: Hit) -> Hit:
    return hit.model_copy(update={"text": "", "source": "", "title": "", "metadata": {}})


def _public_hit(rank: int, hit: Hit) -> dict[str, Any]:
    # The public ``doc_id`` is the id the caller knows (object key, bulk line ``_id``), not the internal identity.
    return {"rank": rank, **hit.model_dump(exclude={"external_id"}), "doc_id": hit.display_id}


def _elapsed_since(iso: str) -> float:
    try:
        start = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return round((datetime.now(UTC) - start).total_seconds() * 1000, 3)
