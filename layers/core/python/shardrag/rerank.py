"""Optional second-stage ranking: a cross-encoder re-scores the fused hits against the question.

``build_reranker(settings)`` returns :class:`NoReranker` (the default: the fused order stands) or
:class:`BedrockReranker` (the Amazon Bedrock ``Rerank`` API of ``bedrock-agent-runtime``, with Amazon Rerank 1.0 or
Cohere Rerank 3.5). Reranking is an improvement, never a dependency: :class:`BedrockReranker` raises
:class:`RerankFailed` for every failure, and the caller keeps the order it already has and flags the answer.

API limits honoured here are those of botocore's service model for ``bedrock-agent-runtime`` (2023-07-26,
``RerankRequest``); botocore checks only minimum lengths client-side, so a larger request would reach the service
and come back as a ``ValidationException``:

- ``queries``: exactly one (``RerankQueriesList`` min 1, max 1);
- ``sources``: 1 to 1000 per call (``RerankSourcesList``) -> :data:`MAX_SOURCES_PER_CALL`;
- query and document text: 1 to 32,000 characters (``RerankTextDocumentTextString``) -> :data:`MAX_TEXT_CHARS`;
- ``numberOfResults``: 1 to 1000 (``BedrockRerankingConfigurationNumberOfResultsInteger``);
- ``modelArn``: the ``BedrockModelArn`` pattern -> :data:`MODEL_ARN_PATTERN`;
- results may be paged with ``nextToken`` (``paginators-1.json`` lists ``Rerank``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field
from shardrag.errors import ConfigurationError, ShardRagError
from shardrag.records import Hit

logger = logging.getLogger(__name__)

#: ``RerankSourcesList`` max: documents one ``Rerank`` call may carry.
MAX_SOURCES_PER_CALL = 1000
#: ``RerankTextDocumentTextString`` max (characters, for the query and for each document).
MAX_TEXT_CHARS = 32_000
#: ``BedrockRerankingConfigurationNumberOfResultsInteger`` max.
MAX_RESULTS_PER_CALL = 1000
#: ``BedrockModelArn`` pattern, as the service model states it (botocore does not check patterns).
MODEL_ARN_PATTERN = (
    r"^(arn:aws(-[^:]+)?:(bedrock|sagemaker):[a-z0-9-]{1,20}:([0-9]{12})?:([a-z-]+/)?)?"
    r"([a-z0-9.-]{1,63}){0,2}(([:][a-z0-9-]{1,63}){0,2})?(/[a-z0-9]{1,12})?$"
)
#: Pages of one call's results followed before giving up: results fit one page in practice; this only bounds a
#: service that kept returning tokens.
_MAX_PAGES = 10
#: Bedrock error codes worth naming: the caller's flag and the operator's log say what to do about it.
_HINTS = {
    "ThrottlingException": "throttled; retry later or raise the rerank quota",
    "ServiceQuotaExceededException": "service quota exceeded",
    "ValidationException": "the request was rejected (model ARN, region or request size)",
    "AccessDeniedException": "access denied (bedrock:Rerank and bedrock:InvokeModel, or model access not granted)",
    "ResourceNotFoundException": "reranker model not found in this region",
    "InternalServerException": "internal error; retry later",
    "BadGatewayException": "bad gateway; retry later",
    "DependencyFailedException": "a dependency failed",
    "ModelNotReadyException": "the model is not ready; retry later",
}


class RerankFailed(ShardRagError):
    """The reranker gave no usable ranking (throttled, refused, unreachable, or a malformed reply).

    Never meant to reach the API caller: the fuse stage catches it, keeps the fused order and marks the response
    as not reranked. ``reason`` is short and stable (the Bedrock error code, ``"connection"``,
    ``"malformed_response"``, ``"no_text"``, ``"empty_question"``) for that flag and for metrics. If it is ever let
    through, it maps like :class:`~shardrag.errors.GenerationFailed`: an upstream model failed (HTTP 502).
    """

    status = 502
    code = "rerank_failed"

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


@runtime_checkable
class Reranker(Protocol):
    """Reorders hits by relevance to the question.

    ``run`` returns at most ``top_n`` hits, best first. Each returned hit is the input hit with ``score``
    replaced by the reranker's relevance score and every other field unchanged: the score a consumer sees (the
    API's hits, the citations) is then the one that put the hit where it is, so ranks and scores never disagree.
    The first-stage cosine score is not kept; it is on a different scale and would not explain the order.
    """

    @property
    def name(self) -> str: ...

    def run(self, question: str, hits: Sequence[Hit], top_n: int) -> list[Hit]: ...


class NoReranker:
    """The identity: the first ``top_n`` hits in the order given, scores untouched."""

    @property
    def name(self) -> str:
        return "none"

    def run(self, question: str, hits: Sequence[Hit], top_n: int) -> list[Hit]:
        _check_top_n(top_n)
        return list(hits[:top_n])


class BedrockReranker:
    """Reranks through the Bedrock ``Rerank`` API (``bedrock-agent-runtime``).

    Candidates beyond ``max_candidates`` are dropped before the call, keeping the head of the given order: the
    hits come from the fuser best first, so the tail is the least likely to matter, and every document sent costs
    latency and money. The candidates left are sent in calls of at most ``batch_size`` (the API's 1000) documents;
    the scores of different calls are merged directly because a cross-encoder scores each (query, document) pair
    on its own, whatever else is in the call. Query and documents are cut to ``max_text_chars`` (the API's 32,000
    characters); the models read fewer tokens than that anyway (Cohere Rerank 3.5 has a 4K-token context) and
    truncate the rest themselves.

    The client is built once, here, unless one is given (tests pass a stubbed client). Retries are botocore's
    standard mode, bounded so that a throttled reranker fails fast and the fused order is used instead.
    """

    def __init__(
        self,
        model_id: str,
        *,
        client: Any | None = None,
        region: str | None = None,
        max_candidates: int = 100,
        batch_size: int = MAX_SOURCES_PER_CALL,
        max_text_chars: int = MAX_TEXT_CHARS,
        additional_model_request_fields: Mapping[str, Any] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if max_candidates < 1:
            raise ValueError("max_candidates must be at least 1")
        if not 1 <= batch_size <= MAX_SOURCES_PER_CALL:
            raise ValueError(f"batch_size must be between 1 and {MAX_SOURCES_PER_CALL}")
        if not 1 <= max_text_chars <= MAX_TEXT_CHARS:
            raise ValueError(f"max_text_chars must be between 1 and {MAX_TEXT_CHARS}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._client: Any = client if client is not None else _make_client(region, timeout_s)
        self.model_arn = model_arn(model_id, region or self._client.meta.region_name)
        self.max_candidates = max_candidates
        self.batch_size = batch_size
        self.max_text_chars = max_text_chars
        self.additional_model_request_fields = dict(additional_model_request_fields or {})

    @property
    def name(self) -> str:
        return f"bedrock:{self.model_arn.rsplit('/', 1)[-1]}"

    def run(self, question: str, hits: Sequence[Hit], top_n: int) -> list[Hit]:
        """The best ``top_n`` of the first ``max_candidates`` hits, scored by the model; raise :class:`RerankFailed`
        when the model gives no usable ranking."""
        _check_top_n(top_n)
        if not hits:
            return []
        if not question.strip():
            raise RerankFailed("cannot rerank for a blank question", reason="empty_question")
        candidates = list(hits[: self.max_candidates])
        blank = [h.chunk_id for h in candidates if not h.text.strip()]
        if blank:
            # Ids-only hits carry no text; scoring them on nothing would rank them at random.
            raise RerankFailed(f"{len(blank)} hits have no text to rerank (first: {blank[0]})", reason="no_text")
        query = question[: self.max_text_chars]
        texts = [h.text[: self.max_text_chars] for h in candidates]

        started = time.perf_counter()
        scored: list[tuple[float, int]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            scored.extend((score, start + index) for index, score in self._rerank(query, batch, top_n))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        ranked = [candidates[index].model_copy(update={"score": score}) for score, index in scored[:top_n]]
        logger.info(
            "bedrock rerank done",
            extra={
                "model_arn": self.model_arn,
                "candidates": len(candidates),
                "dropped": len(hits) - len(candidates),
                "calls": math.ceil(len(texts) / self.batch_size),
                "returned": len(ranked),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        )
        return ranked

    def _rerank(self, query: str, texts: list[str], top_n: int) -> list[tuple[int, float]]:
        """(index in ``texts``, relevance score) for the best ``top_n`` of one call's documents."""
        wanted = min(top_n, len(texts), MAX_RESULTS_PER_CALL)
        configuration: dict[str, Any] = {"modelArn": self.model_arn}
        if self.additional_model_request_fields:
            configuration["additionalModelRequestFields"] = self.additional_model_request_fields
        request: dict[str, Any] = {
            "queries": [{"type": "TEXT", "textQuery": {"text": query}}],
            "sources": [
                {"type": "INLINE", "inlineDocumentSource": {"type": "TEXT", "textDocument": {"text": text}}}
                for text in texts
            ],
            "rerankingConfiguration": {
                "type": "BEDROCK_RERANKING_MODEL",
                "bedrockRerankingConfiguration": {"numberOfResults": wanted, "modelConfiguration": configuration},
            },
        }
        results: list[Any] = []
        token: str | None = None
        for _ in range(_MAX_PAGES):
            response = self._call(request if token is None else {**request, "nextToken": token})
            page = response.get("results") or []
            results.extend(page)
            next_token = response.get("nextToken")
            if not next_token or next_token == token or not page or len(results) >= wanted:
                break
            token = next_token
        return _parse_results(results, len(texts), self.model_arn)[:wanted]

    def _call(self, request: dict[str, Any]) -> Mapping[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response: Mapping[str, Any] = self._client.rerank(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            hint = _HINTS.get(code, "request failed")
            raise RerankFailed(
                f"Bedrock rerank with {self.model_arn} failed: {code}: {hint} ({error.get('Message', '')})",
                reason=code,
            ) from exc
        except BotoCoreError as exc:
            # Connection errors, read timeouts, parameter validation: no response to interpret.
            raise RerankFailed(f"Bedrock rerank with {self.model_arn} failed: {exc}", reason="connection") from exc
        return response


class RerankSettings(BaseModel):
    """The optional rerank stage. ``kind="none"`` (the default) keeps the fused order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["none", "bedrock"] = "none"
    #: A reranker model id (``cohere.rerank-v3-5:0``, ``amazon.rerank-v1:0``) or a full model ARN. Cohere is the
    #: default because it is offered in more regions (Amazon Rerank 1.0 is not offered in us-east-1).
    model_id: str = Field(default="cohere.rerank-v3-5:0", min_length=1, max_length=2048)
    #: Region of the client and of the built ARN; None: the runtime's region (``AWS_REGION`` in Lambda).
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    #: Hits kept after reranking; None keeps the request's ``top_k``.
    top_n: int | None = Field(default=None, ge=1, le=MAX_RESULTS_PER_CALL)
    #: Fused hits sent to the reranker (the head of the fused order). One call holds up to 1000; each document
    #: adds latency and cost, and 100 is well past where a reranker still finds relevant hits the first stage
    #: ranked low.
    max_candidates: int = Field(default=100, ge=1, le=MAX_SOURCES_PER_CALL)
    #: Model-specific request fields passed through as ``additionalModelRequestFields``.
    additional_model_request_fields: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=10.0, gt=0, le=60)


def build_reranker(settings: RerankSettings, client: Any | None = None) -> Reranker:
    """The reranker ``settings`` describe; ``client`` is a ``bedrock-agent-runtime`` client for tests and for callers
    that already hold one. Raises :class:`ConfigurationError` when the settings cannot produce one."""
    if settings.kind == "none":
        return NoReranker()
    if settings.kind == "bedrock":
        try:
            return BedrockReranker(
                settings.model_id,
                client=client,
                region=settings.region,
                max_candidates=settings.max_candidates,
                additional_model_request_fields=settings.additional_model_request_fields,
                timeout_s=settings.timeout_s,
            )
        except ValueError as exc:
            raise ConfigurationError(f"invalid rerank settings: {exc}") from None
    raise ConfigurationError(f"unknown reranker kind {settings.kind!r}")


def model_arn(model_id: str, region: str | None) -> str:
    """``model_id`` as a foundation-model ARN in ``region``, or unchanged when it already is an ARN.

    Raises ``ValueError`` when no ARN can be made or the result does not match the service's ARN pattern.
    """
    model_id = model_id.strip()
    if model_id.startswith("arn:"):
        arn = model_id
    else:
        if not model_id:
            raise ValueError("model_id must not be empty")
        if not region:
            raise ValueError(f"a region is needed to build the ARN of {model_id!r}; set one or give a full ARN")
        arn = f"arn:{_partition(region)}:bedrock:{region}::foundation-model/{model_id}"
    if len(arn) > 2048 or not re.fullmatch(MODEL_ARN_PATTERN, arn):
        raise ValueError(f"{arn!r} is not a valid Bedrock model ARN")
    return arn


def _partition(region: str) -> str:
    # The partitions with their own ARN prefix that Bedrock is offered in; everything else is ``aws``.
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _parse_results(results: Sequence[Any], count: int, arn: str) -> list[tuple[int, float]]:
    """(index, score) pairs, best first; raise :class:`RerankFailed` unless every result names a distinct document
    of the call with a finite score."""
    parsed: dict[int, float] = {}
    for result in results:
        index = result.get("index") if isinstance(result, Mapping) else None
        score = result.get("relevanceScore") if isinstance(result, Mapping) else None
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < count
            or index in parsed
            or not isinstance(score, int | float)
            or not math.isfinite(score)
        ):
            raise RerankFailed(
                f"Bedrock rerank with {arn} returned an unusable result {result!r} for {count} documents",
                reason="malformed_response",
            )
        parsed[index] = float(score)
    return sorted(parsed.items(), key=lambda item: (-item[1], item[0]))


def _check_top_n(top_n: int) -> None:
    if top_n < 1:
        raise ValueError("top_n must be at least 1")


def _make_client(region: str | None, timeout_s: float) -> Any:
    # Imported here so that importing this module (NoReranker, the settings) does not load boto3.
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    config = Config(
        read_timeout=timeout_s,
        connect_timeout=min(timeout_s, 5.0),
        retries={"mode": "standard", "total_max_attempts": 2},
    )
    try:
        return boto3.client("bedrock-agent-runtime", region_name=region, config=config)
    except BotoCoreError as exc:  # NoRegionError above all: a configuration problem, found at cold start.
        raise ValueError(f"cannot create the bedrock-agent-runtime client: {exc}") from exc


__all__ = [
    "MAX_SOURCES_PER_CALL",
    "MAX_TEXT_CHARS",
    "BedrockReranker",
    "NoReranker",
    "RerankFailed",
    "RerankSettings",
    "Reranker",
    "build_reranker",
    "model_arn",
]
