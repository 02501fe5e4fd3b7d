"""Conversations in (moto's) DynamoDB and one chat turn through the service: the events in order, the turn kept,
another caller's session a 404, bad input refused before the stream opens, a client that leaves stops it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from shardrag.chat.condense import DeterministicCondenser
from shardrag.chat.conversations import TTL_ATTRIBUTE, DynamoDbConversationStore, SessionNotFound, table_definition
from shardrag.chat.records import MAX_HISTORY_CHARS, ChatCaller, ChatEvent, StoredTurn, parse_chat_request
from shardrag.chat.service import ChatService
from shardrag.chat.sse import KEEPALIVE, format_event, pump
from shardrag.errors import BadRequest
from shardrag.generation import ExtractiveGenerator
from shardrag.generation.stream import AnswerStream
from shardrag.records import Hit

TABLE = "conversations"
ALICE = ChatCaller(tenant="t1", owner="alice")


@pytest.fixture
def ddb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        yield client


def turn(n: int, question: str = "q") -> StoredTurn:
    return StoredTurn(turn=n, question=question, retrieval_query=question, answer=f"a{n}")


def test_turns_come_back_in_order_and_the_list_shows_the_conversation(ddb: Any) -> None:
    store = DynamoDbConversationStore(ddb, TABLE)
    store.append(ALICE, "a" * 32, turn(1, "first question"))
    store.append(ALICE, "a" * 32, turn(2))
    assert [t.turn for t in store.turns(ALICE, "a" * 32)] == [1, 2]
    assert [(s.session_id, s.title) for s in store.sessions(ALICE)] == [("a" * 32, "first question")]


def test_a_turn_number_is_written_once(ddb: Any) -> None:
    store = DynamoDbConversationStore(ddb, TABLE)
    store.append(ALICE, "a" * 32, turn(1))
    with pytest.raises(ddb.exceptions.ConditionalCheckFailedException):
        store.append(ALICE, "a" * 32, turn(1))


callers = st.builds(
    ChatCaller, tenant=st.sampled_from(["", "t1", "t2"]), owner=st.sampled_from(["alice", "bob", "a#b"])
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(owner=callers, other=callers)
def test_no_caller_reads_or_lists_another_callers_conversation(ddb: Any, owner: ChatCaller, other: ChatCaller) -> None:
    store = DynamoDbConversationStore(ddb, TABLE)
    session = f"{abs(hash((owner.tenant, owner.owner))) % 10**31:032d}"
    with contextlib.suppress(ddb.exceptions.ConditionalCheckFailedException):  # the same owner drawn again
        store.append(owner, session, turn(1, "secret"))
    if other == owner:
        assert store.turns(other, session)[0].question == "secret"
    else:
        with pytest.raises(SessionNotFound):
            store.turns(other, session)
        assert session not in [s.session_id for s in store.sessions(other)]


def test_an_expired_conversation_is_gone_before_dynamodb_deletes_it(ddb: Any) -> None:
    store = DynamoDbConversationStore(ddb, TABLE)
    store.append(ALICE, "b" * 32, turn(1))
    item = ddb.scan(TableName=TABLE)["Items"][0]
    assert int(item[TTL_ATTRIBUTE]["N"]) > time.time() + 29 * 86_400
    ddb.update_item(
        TableName=TABLE,
        Key={"pk": item["pk"], "turn": item["turn"]},
        UpdateExpression="SET #t = :t",
        ExpressionAttributeNames={"#t": TTL_ATTRIBUTE},
        ExpressionAttributeValues={":t": {"N": str(int(time.time()) - 1)}},
    )
    with pytest.raises(SessionNotFound):
        store.turns(ALICE, "b" * 32)


# -- the service ---------------------------------------------------------------------------------------------
HIT = Hit(chunk_id="c1", doc_id="tides.txt", score=0.9, text="Tides are caused by the Moon. The Sun adds a little.")


class Retriever:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[dict[str, Any], str]] = []

    def __call__(self, body: dict[str, Any], tenant: str) -> tuple[int, dict[str, Any]]:
        self.calls.append((body, tenant))
        if self.status != 200:
            return self.status, {"error": {"code": "shards_unavailable", "message": "no shard answered"}}
        public = {"rank": 1, **HIT.model_dump(exclude={"external_id"})}
        return 200, {
            "answer": None,
            "hits": [public],
            "degraded": False,
            "shards": {"searched": [0], "failed": [], "skipped": []},
            "timings_ms": {"embed": 1.0, "total": 5.0, "shards": {"0": 2.0}},
        }


def service(ddb: Any, retriever: Retriever, generator: Any = None) -> ChatService:
    return ChatService(
        retrieve=retriever,
        generator=lambda: generator or ExtractiveGenerator(),
        store=DynamoDbConversationStore(ddb, TABLE),
        condenser=DeterministicCondenser(),
    )


def test_a_new_conversation_streams_retrieval_tokens_done_and_keeps_the_turn(ddb: Any) -> None:
    retriever = Retriever()
    chat = service(ddb, retriever)
    started = chat.start(parse_chat_request({"question": "What causes ocean tides?", "mode": "bm25"}), ALICE)
    events = list(started.events())
    names = [e.event for e in events]
    assert names[0] == "retrieval" and names[-1] == "done" and names.count("token") >= 1
    first = events[0].data
    assert first["session_id"] == started.session_id and first["retrieval_query"] == "What causes ocean tides?"
    assert first["citations"][0]["chunk_id"] == "c1" and first["hits"][0]["rank"] == 1
    assert retriever.calls == [({"question": "What causes ocean tides?", "generate": False, "mode": "bm25"}, "t1")]
    done = events[-1].data
    assert done["answer"] == "".join(e.data["text"] for e in events if e.event == "token")
    assert done["ttft_ms"] is not None and done["total_ms"] >= done["ttft_ms"]
    kept = chat.store.turns(ALICE, started.session_id or "")
    assert kept[0].answer == done["answer"] and kept[0].status == "done"

    follow = chat.start(
        parse_chat_request({"question": "How strong are they?", "session_id": started.session_id}), ALICE
    )
    assert follow.turn == 2
    again = list(follow.events())
    assert again[0].data["retrieval_query"] != "How strong are they?"
    assert "tides" in again[0].data["retrieval_query"]
    with pytest.raises(SessionNotFound):
        chat.start(parse_chat_request({"question": "hi", "session_id": started.session_id}), ChatCaller(owner="bob"))


def test_a_client_history_is_used_and_nothing_is_stored(ddb: Any) -> None:
    chat = service(ddb, Retriever())
    request = parse_chat_request(
        {"question": "How strong are they?", "history": [{"role": "user", "text": "What causes ocean tides?"}]}
    )
    started = chat.start(request, ALICE)
    events = list(started.events())
    assert started.session_id is None and "tides" in events[0].data["retrieval_query"]
    assert ddb.scan(TableName=TABLE)["Count"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"question": "q", "history": [{"role": "user", "text": "x" * 8000}] * (MAX_HISTORY_CHARS // 8000 + 1)},
        {"question": "q", "history": [{"role": "user", "text": "x"}] * 41},
        {"question": "q", "history": [{"role": "system", "text": "x"}]},
        {"question": "q", "session_id": "a" * 32, "history": []},
        {"question": "q", "session_id": "../etc"},
        {"question": " "},
    ],
)
def test_bad_chat_bodies_are_400(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        parse_chat_request(body)


def test_a_failed_retrieval_is_an_error_event_with_its_status(ddb: Any) -> None:
    events = list(service(ddb, Retriever(status=503)).start(parse_chat_request({"question": "q"}), ALICE).events())
    assert [e.event for e in events] == ["error"]
    assert events[0].data["status"] == 503 and events[0].data["code"] == "shards_unavailable"


class SlowGenerator:
    """A generator whose tokens take time, counting how many it produced."""

    name = "slow"

    def __init__(self) -> None:
        self.produced = 0

    def stream(self, question: str, hits: Any) -> AnswerStream:
        def produce(stream: AnswerStream) -> Iterator[str]:
            for i in range(500):
                time.sleep(0.005)
                self.produced += 1
                yield f"w{i} "

        return AnswerStream(model="slow", citations=[], produce=produce)


def test_a_client_that_leaves_stops_generation_and_the_partial_answer_is_kept(ddb: Any) -> None:
    generator = SlowGenerator()
    chat = service(ddb, Retriever(), generator)
    started = chat.start(parse_chat_request({"question": "What causes ocean tides?"}), ALICE)
    written: list[bytes] = []

    def write(data: bytes) -> None:
        if len(written) == 5:
            raise BrokenPipeError("client closed the connection")
        written.append(data)

    assert pump(started.events(), write, keepalive_s=5) is False
    assert generator.produced < 50
    kept = chat.store.turns(ALICE, started.session_id or "")
    assert kept[0].status == "stopped" and kept[0].answer.startswith("w0 w1 w2")


def test_keep_alive_comments_fill_a_slow_wait() -> None:
    def slow() -> Iterator[ChatEvent]:
        time.sleep(0.35)
        yield ChatEvent(event="done", data={})

    written: list[bytes] = []
    assert pump(slow(), written.append, keepalive_s=0.1)
    assert written.count(KEEPALIVE) >= 2 and written[-1] == b"event: done\ndata: {}\n\n"
    # A newline inside the text stays inside the JSON: one data line per event, whatever the model writes.
    assert format_event(ChatEvent(event="token", data={"text": "a\nb"})) == b'event: token\ndata: {"text": "a\\nb"}\n\n'
