"""The public query request: one model for the local API, the Embed handler and the API Gateway validator."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from shardrag.errors import BadRequest

MAX_QUESTION_CHARS = 2000
MAX_TOP_K = 50
#: Deeper rankings (evaluation: recall@100 at document level) are served as ids and scores only, which keeps
#: the Parallel state's output under the 256 KiB payload limit (see ``workflow.IDS_ONLY_MAX_HITS``).
MAX_TOP_K_IDS_ONLY = 200
#: Request bodies larger than this are refused before parsing (the question cap bounds the rest).
MAX_BODY_BYTES = 64 * 1024

#: Bounds on ``filters``, the same in the API Gateway request model (generated from this schema) and here. The
#: compiled expression has its own byte bound (``workflow.MAX_FILTER_EXPR_BYTES``), which is what keeps the
#: state payload in budget; these bound the work of validating and compiling.
MAX_FILTER_FIELDS = 16
MAX_FILTER_STRING_CHARS = 1024
MAX_FILTER_LIST_VALUES = 100
FilterString = Annotated[str, Field(max_length=MAX_FILTER_STRING_CHARS)]
FilterScalar = FilterString | int | float | bool
FilterValue = (
    FilterScalar
    | Annotated[list[FilterString | int | float], Field(max_length=MAX_FILTER_LIST_VALUES)]
    | Annotated[dict[str, FilterString | int | float], Field(max_length=4)]
)
Mode = Literal["dense", "bm25", "hybrid"]


class QueryRequest(BaseModel):
    """``POST /query`` body."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, strict=True)
    # Strict: JSON true or "5" is a client bug to report, not a number to guess.
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K_IDS_ONLY, strict=True)
    generate: bool = Field(default=True, strict=True)
    #: ``false`` returns hits as ids, scores and positions only (no text, source, title or metadata).
    include_text: bool = Field(default=True, strict=True)
    filters: Annotated[dict[str, FilterValue], Field(max_length=MAX_FILTER_FIELDS)] | None = None
    #: ``dense`` (embedding), ``bm25`` (lexical) or ``hybrid`` (both, fused); the environment sets the default.
    mode: Mode | None = None
    #: Centroid routing: how many of the nearest shards to search (1..shard count; checked against the
    #: deployment's shard count when the request is resolved). Unset: the configured default or adaptive probing.
    #: Hash routing always searches every shard and ignores it.
    probe: int | None = Field(default=None, ge=1, le=64, strict=True)
    #: Hybrid only: ``false`` skips the dense feedback round (one shard-search round less), ``true`` runs it even
    #: when the query is past ``retrieval.feedback.budget_ms``. Unset: the deployment's default
    #: (``retrieval.feedback.enabled``), shed under load.
    feedback: bool | None = Field(default=None, strict=True)

    @model_validator(mode="after")
    def _deep_rankings_are_ids_only(self) -> QueryRequest:
        if self.top_k is not None and self.top_k > MAX_TOP_K and (self.generate or self.include_text):
            raise ValueError(f"top_k above {MAX_TOP_K} needs generate=false and include_text=false (ranked ids only)")
        return self

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be blank")
        return value

    def resolved_top_k(self, default: int) -> int:
        return self.top_k if self.top_k is not None else default


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_query_request(payload: Any) -> QueryRequest:
    """Validate an already-decoded JSON body; raise :class:`BadRequest` with a readable message."""
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return QueryRequest.model_validate(payload)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None


def parse_query_body(body: bytes | str | None) -> QueryRequest:
    """Decode and validate a raw HTTP body."""
    if body is None or len(body) == 0:
        raise BadRequest("request body is empty; expected JSON with a 'question'")
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    return parse_query_request(payload)


def query_request_schema() -> dict[str, Any]:
    """JSON schema of the request (OpenAPI document and the API Gateway request model use it)."""
    return QueryRequest.model_json_schema()
