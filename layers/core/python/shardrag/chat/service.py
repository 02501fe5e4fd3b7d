"""One chat turn, end to end: load the caller's conversation, condense the follow-up, retrieve through the query
workflow (generation off), stream the answer, keep the finished turn.

The service is the same in both runtimes; only ``retrieve`` differs (the local runtime runs the state machine in
moto, the deployed answer function calls StartSyncExecution on the Express workflow). Everything that can be
refused with an HTTP status (a malformed body, an unknown or foreign session, an oversized history) is refused
by :meth:`ChatService.start`, before the stream opens; what fails later arrives as an ``error`` event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from shardrag.api_contract import error_body
from shardrag.chat.condense import Condensed, Condenser
from shardrag.chat.conversations import ConversationStore, new_session_id
from shardrag.chat.records import (
    MAX_HISTORY_TURNS,
    ChatCaller,
    ChatEvent,
    ChatRequest,
    HistoryTurn,
    StoredTurn,
    TurnStatus,
    check_history_size,
)
from shardrag.errors import BadRequest, GenerationFailed
from shardrag.generation.stream import AnswerStream, StreamingGenerator
from shardrag.records import Hit

log = logging.getLogger(__name__)

#: ``(query request body, tenant) -> (HTTP status, body)``: the query workflow, mapped as for ``POST /query``.
Retrieve = Callable[[dict[str, Any], str], tuple[int, dict[str, Any]]]


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


class Retrieval:
    """The outcome of the retrieval step, as the ``retrieval`` event reports it."""

    def __init__(self, status: int, body: dict[str, Any], condensed: Condensed, took_ms: float) -> None:
        self.status = status
        self.body = body
        self.condensed = condensed
        self.took_ms = took_ms

    @property
    def hits(self) -> list[Hit]:
        fields = set(Hit.model_fields)
        return [Hit.model_validate({k: v for k, v in h.items() if k in fields}) for h in self.body.get("hits", [])]


class ChatTurn:
    """A started turn: iterate :meth:`events`; :meth:`close` (the client left) stops generation."""

    def __init__(
        self,
        service: ChatService,
        request: ChatRequest,
        caller: ChatCaller,
        session_id: str | None,
        history: list[HistoryTurn],
        turn: int,
    ) -> None:
        self._service = service
        self.request = request
        self.caller = caller
        self.session_id = session_id
        self.history = history
        self.turn = turn
        self._stream: AnswerStream | None = None
        self._stored = False

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()

    def events(self) -> Iterator[ChatEvent]:
        started = time.perf_counter()
        service = self._service
        condensed = Condensed(query=self.request.question.strip(), method="unchanged")
        retrieval_query = condensed.query
        try:
            t0 = time.perf_counter()
            condensed = service.condenser.run(self.request.question, self.history)
            retrieval_query = condensed.query
            condense_ms = _ms(t0)
            body: dict[str, Any] = {"question": condensed.query, "generate": False}
            if self.request.mode:
                body["mode"] = self.request.mode
            if self.request.filters is not None:
                body["filters"] = self.request.filters
            if self.request.top_k is not None:
                body["top_k"] = self.request.top_k
            t0 = time.perf_counter()
            http_status, result = service.retrieve(body, self.caller.tenant)
            retrieval = Retrieval(http_status, result, condensed, _ms(t0))
            if http_status != 200:
                error = result.get("error") or {}
                yield ChatEvent(
                    event="error",
                    data={
                        "status": http_status,
                        "code": error.get("code", "internal_error"),
                        "message": error.get("message", "retrieval failed"),
                        "stage": "retrieval",
                        "session_id": self.session_id,
                    },
                )
                return
            hits = [h for h in retrieval.hits if h.text]
            stream = service.generator().stream(retrieval_query, hits)
            self._stream = stream
            timings = dict(result.get("timings_ms") or {})
            timings["condense"] = condense_ms
            timings["retrieval"] = retrieval.took_ms
            yield ChatEvent(
                event="retrieval",
                data={
                    "session_id": self.session_id,
                    "turn": self.turn,
                    "retrieval_query": retrieval_query,
                    "question": self.request.question,
                    "condenser": {"name": service.condenser.name, "method": condensed.method},
                    "mode": self.request.mode or result.get("mode"),
                    "hits": result.get("hits", []),
                    "citations": [c.model_dump() for c in stream.citations],
                    "degraded": bool(result.get("degraded")),
                    "shards": result.get("shards", {}),
                    "rerank": result.get("rerank"),
                    "timings_ms": timings,
                },
            )
            first_token_ms: float | None = None
            for delta in stream:
                if first_token_ms is None:
                    first_token_ms = _ms(started)
                yield ChatEvent(event="token", data={"text": delta})
            answer = stream.answer()
            self._store(retrieval_query, answer.text, [c.model_dump() for c in answer.citations], "done")
            yield ChatEvent(
                event="done",
                data={
                    "session_id": self.session_id,
                    "turn": self.turn,
                    "answer": answer.text,
                    "citations": [c.model_dump() for c in answer.citations],
                    "model": answer.model,
                    "finish_reason": stream.finish_reason,
                    "usage": stream.usage,
                    "ttft_ms": first_token_ms,
                    "total_ms": _ms(started),
                },
            )
        except GenerationFailed as exc:
            log.warning("chat generation failed: %s", exc.message)
            self._store(retrieval_query, self._partial(), [], "failed")
            yield ChatEvent(
                event="error",
                data={"status": 502, **error_body(exc.code, exc.message)["error"], "session_id": self.session_id},
            )
        except GeneratorExit:
            # The client went away (or pressed stop): keep what it saw, marked as stopped, and stop the model.
            self.close()
            self._store(retrieval_query, self._partial(), [], "stopped")
            raise
        except Exception:
            log.exception("chat turn failed")
            self._store(retrieval_query, self._partial(), [], "failed")
            yield ChatEvent(
                event="error",
                data={
                    "status": 500,
                    **error_body("internal_error", "internal error; see the server log")["error"],
                    "session_id": self.session_id,
                },
            )

    def _partial(self) -> str:
        return self._stream.text if self._stream is not None else ""

    def _store(self, retrieval_query: str, answer: str, citations: list[dict[str, Any]], status: TurnStatus) -> None:
        if self.session_id is None or self._stored:
            return
        self._stored = True
        try:
            self._service.store.append(
                self.caller,
                self.session_id,
                StoredTurn(
                    turn=self.turn,
                    question=self.request.question,
                    retrieval_query=retrieval_query,
                    answer=answer,
                    citations=citations,
                    mode=self.request.mode or "",
                    status=status,
                    created_at=datetime.now(UTC).isoformat(),
                ),
            )
        except Exception:  # the answer was delivered; a lost turn is logged, never a broken stream
            log.exception("could not store chat turn %d of a session", self.turn)


class ChatService:
    def __init__(
        self,
        *,
        retrieve: Retrieve,
        generator: Callable[[], StreamingGenerator],
        store: ConversationStore,
        condenser: Condenser,
    ) -> None:
        self.retrieve = retrieve
        self.generator = generator
        self.store = store
        self.condenser = condenser

    def start(self, request: ChatRequest, caller: ChatCaller) -> ChatTurn:
        """Check everything that has an HTTP status of its own, then return the turn to stream.

        Raises :class:`~shardrag.chat.conversations.SessionNotFound` (404) for a session this caller does not
        have and :class:`BadRequest` (400) for a history too large to use.
        """
        if request.history is not None:
            check_history_size(request.history)
            return ChatTurn(self, request, caller, None, list(request.history), turn=1)
        if request.session_id is None:
            return ChatTurn(self, request, caller, new_session_id(), [], turn=1)
        stored = self.store.turns(caller, request.session_id)
        if len(stored) * 2 >= MAX_HISTORY_TURNS:
            raise BadRequest(f"this conversation has reached {len(stored)} turns; start a new one")
        history = [t for turn in stored for t in turn.as_history()]
        check_history_size(history)
        return ChatTurn(self, request, caller, request.session_id, history, turn=stored[-1].turn + 1)
