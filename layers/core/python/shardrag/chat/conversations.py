"""Conversations in DynamoDB: one item per turn, expiring by TTL, addressable only by their owner.

The partition key of a conversation is a digest of (tenant, owner, session id). A caller's identity is part of
the key it reads, so no request can name another caller's conversation: a session id that belongs to someone
else reads an empty partition, exactly like an id that never existed, and both are a 404. The first turn of a
conversation also carries ``owner_key`` (a digest of tenant and owner), the partition of a sparse index that
lists a caller's conversations, newest first.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from shardrag.chat.records import ChatCaller, SessionSummary, StoredTurn
from shardrag.errors import ShardRagError

#: Days a conversation is kept after its last turn (the table's TTL attribute enforces it).
DEFAULT_TTL_DAYS = 30
OWNER_INDEX = "by_owner"
TTL_ATTRIBUTE = "expires_at"
#: Characters of the first question kept as a conversation's title in the list.
TITLE_CHARS = 80
_SER = TypeSerializer()
_DES = TypeDeserializer()


class SessionNotFound(ShardRagError):
    """No conversation with this id for this caller (never existed, expired, or someone else's): HTTP 404."""

    status = 404
    code = "not_found"


def _digest(parts: list[str]) -> str:
    # JSON of the list: no separator a tenant or owner could contain can forge another caller's key.
    return hashlib.blake2b(json.dumps(parts, ensure_ascii=False).encode("utf-8"), digest_size=16).hexdigest()


def conversation_key(caller: ChatCaller, session_id: str) -> str:
    return "c#" + _digest([caller.tenant, caller.owner, session_id])


def owner_key(caller: ChatCaller) -> str:
    return "o#" + _digest([caller.tenant, caller.owner])


def new_session_id() -> str:
    return uuid.uuid4().hex


def table_definition(table_name: str) -> dict[str, Any]:
    """``CreateTable`` arguments (the CDK construct mirrors them; the local runtime calls them)."""
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "turn", "AttributeType": "N"},
            {"AttributeName": "owner_key", "AttributeType": "S"},
            {"AttributeName": "started_at", "AttributeType": "S"},
        ],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "turn", "KeyType": "RANGE"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": OWNER_INDEX,
                "KeySchema": [
                    {"AttributeName": "owner_key", "KeyType": "HASH"},
                    {"AttributeName": "started_at", "KeyType": "RANGE"},
                ],
                "Projection": {
                    "ProjectionType": "INCLUDE",
                    "NonKeyAttributes": ["session_id", "title"],
                },
            }
        ],
    }


class ConversationStore(Protocol):
    def turns(self, caller: ChatCaller, session_id: str) -> list[StoredTurn]:
        """Every turn of the caller's session, oldest first; :class:`SessionNotFound` when there is none."""
        ...

    def append(self, caller: ChatCaller, session_id: str, turn: StoredTurn) -> None: ...

    def sessions(self, caller: ChatCaller, limit: int = 50) -> list[SessionSummary]: ...


class DynamoDbConversationStore:
    """The conversation table (``table_definition``) through a low-level DynamoDB client."""

    def __init__(self, client: Any, table: str, *, ttl_days: float = DEFAULT_TTL_DAYS) -> None:
        if ttl_days <= 0:
            raise ValueError("ttl_days must be positive")
        self._client = client
        self.table = table
        self.ttl_s = int(ttl_days * 86_400)

    def turns(self, caller: ChatCaller, session_id: str) -> list[StoredTurn]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": conversation_key(caller, session_id)}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**kwargs)
            items.extend(page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        now = time.time()
        # TTL deletes lazily (within days): an expired item still in the table is already gone for the caller.
        live = [i for i in items if float(i.get(TTL_ATTRIBUTE, {}).get("N", "inf")) > now]
        if not live:
            raise SessionNotFound("no such conversation")
        return [_turn(item) for item in live]

    def append(self, caller: ChatCaller, session_id: str, turn: StoredTurn) -> None:
        now = datetime.now(UTC).isoformat()
        values: dict[str, Any] = {
            "pk": conversation_key(caller, session_id),
            "turn": turn.turn,
            "question": turn.question,
            "retrieval_query": turn.retrieval_query,
            "answer": turn.answer,
            "citations": json.dumps(turn.citations),
            "mode": turn.mode,
            "status": turn.status,
            "created_at": turn.created_at or now,
            TTL_ATTRIBUTE: int(time.time()) + self.ttl_s,
        }
        if turn.turn == 1:
            values |= {
                "owner_key": owner_key(caller),
                "started_at": values["created_at"],
                "session_id": session_id,
                "title": turn.question.strip()[:TITLE_CHARS],
            }
        self._client.put_item(
            TableName=self.table,
            Item={k: _SER.serialize(v) for k, v in values.items()},
            # Two answers racing for the same turn number: the later one must not overwrite the earlier.
            ConditionExpression="attribute_not_exists(pk)",
        )

    def sessions(self, caller: ChatCaller, limit: int = 50) -> list[SessionSummary]:
        page = self._client.query(
            TableName=self.table,
            IndexName=OWNER_INDEX,
            KeyConditionExpression="owner_key = :o",
            ExpressionAttributeValues={":o": {"S": owner_key(caller)}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [
            SessionSummary(
                session_id=item["session_id"]["S"], title=item["title"]["S"], started_at=item["started_at"]["S"]
            )
            for item in page.get("Items", [])
        ]


def _turn(item: dict[str, Any]) -> StoredTurn:
    values = {k: _DES.deserialize(v) for k, v in item.items()}
    return StoredTurn(
        turn=int(values["turn"]),
        question=values["question"],
        retrieval_query=values.get("retrieval_query", values["question"]),
        answer=values.get("answer", ""),
        citations=json.loads(values.get("citations") or "[]"),
        mode=values.get("mode", ""),
        status=values.get("status", "done"),
        created_at=values.get("created_at", ""),
    )
