"""The chat contract: the ``POST /chat`` body, the turns a conversation keeps and the events a stream carries."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from shardrag.errors import BadRequest
from shardrag.request import MAX_BODY_BYTES, MAX_FILTER_FIELDS, MAX_QUESTION_CHARS, MAX_TOP_K, FilterValue, Mode

#: Turns a client may send as ``history`` (and a stored session may hold before it is closed to new turns).
MAX_HISTORY_TURNS = 40
#: Characters of ``history`` text in all: an agent turn may be long, the condenser reads only the recent ones.
MAX_HISTORY_CHARS = 48_000
#: Characters of one history turn.
MAX_TURN_CHARS = 8_000
#: A session id is ours (32 hex digits); anything else is not a session this API issued.
SESSION_ID_PATTERN = r"^[0-9a-f]{32}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HistoryTurn(_Model):
    """One earlier message: what the user asked or what the assistant answered."""

    role: Literal["user", "assistant"]
    text: Annotated[str, Field(max_length=MAX_TURN_CHARS, strict=True)]


class ChatRequest(_Model):
    """``POST /chat`` body: a question, and either a stored session or a history the client keeps itself."""

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, strict=True)
    session_id: str | None = Field(default=None, pattern=SESSION_ID_PATTERN)
    history: list[HistoryTurn] | None = None
    mode: Mode | None = None
    filters: Annotated[dict[str, FilterValue], Field(max_length=MAX_FILTER_FIELDS)] | None = None
    top_k: int | None = Field(default=None, ge=1, le=MAX_TOP_K, strict=True)

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be blank")
        return value

    @model_validator(mode="after")
    def _one_source_of_history(self) -> ChatRequest:
        if self.session_id is not None and self.history is not None:
            raise ValueError("send either session_id (a stored conversation) or history (your own), not both")
        return self


def check_history_size(turns: list[HistoryTurn]) -> None:
    """A history the condenser and the store can hold; a larger one is the client's bug (400), never cut silently."""
    if len(turns) > MAX_HISTORY_TURNS:
        raise BadRequest(f"history has {len(turns)} turns; at most {MAX_HISTORY_TURNS} are accepted")
    chars = sum(len(turn.text) for turn in turns)
    if chars > MAX_HISTORY_CHARS:
        raise BadRequest(f"history holds {chars} characters; at most {MAX_HISTORY_CHARS} are accepted")


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def parse_chat_body(body: bytes | str | None) -> ChatRequest:
    """Decode and validate a raw ``POST /chat`` body; :class:`BadRequest` says what is wrong."""
    if body is None or len(body) == 0:
        raise BadRequest("request body is empty; expected JSON with a 'question'")
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes (history included)")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    return parse_chat_request(payload)


def parse_chat_request(payload: Any) -> ChatRequest:
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        request = ChatRequest.model_validate(payload)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None
    if request.history is not None:
        check_history_size(request.history)
    return request


class ChatCaller(_Model):
    """Who is chatting: the tenant (as for queries) and the caller's own identity, which scopes conversations."""

    tenant: str = ""
    #: Cognito ``sub``, the IAM caller's ARN or the API key id deployed; locally a header stands in for it.
    owner: str = Field(min_length=1, max_length=512)


TurnStatus = Literal["done", "stopped", "failed"]


class StoredTurn(_Model):
    """One question and its answer, as kept in the conversation table (one item per turn)."""

    turn: int = Field(ge=1)
    question: str
    #: The standalone query retrieval used (equal to ``question`` when nothing was rewritten).
    retrieval_query: str
    answer: str = ""
    citations: list[dict[str, Any]] = Field(default_factory=list)
    mode: str = ""
    #: ``done``: a whole answer; ``stopped``: the client went away mid-answer; ``failed``: generation failed.
    status: TurnStatus = "done"
    created_at: str = ""

    def as_history(self) -> list[HistoryTurn]:
        turns = [HistoryTurn(role="user", text=self.question[:MAX_TURN_CHARS])]
        if self.answer:
            turns.append(HistoryTurn(role="assistant", text=self.answer[:MAX_TURN_CHARS]))
        return turns


class SessionSummary(_Model):
    session_id: str
    title: str
    started_at: str


class ChatEvent(_Model):
    """One server-sent event: ``retrieval``, ``token``, ``done`` or ``error``."""

    event: Literal["retrieval", "token", "done", "error"]
    data: dict[str, Any]
