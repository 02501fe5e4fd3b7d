"""S3 event notifications as typed records.

S3 delivers at least once and in no particular order; the ``sequencer`` of a key's events orders them. S3
documents it as a hexadecimal string to be compared, for one key, after left-padding the shorter one with
zeros — :func:`normalise_sequencer` does that once so that stored values compare as plain strings (DynamoDB
condition expressions included).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any, Literal
from urllib.parse import quote_plus, unquote_plus

from pydantic import Field
from shardrag.records import Record

#: Width of a normalised sequencer (real ones are 16-18 hex digits).
SEQUENCER_WIDTH = 32
ZERO_SEQUENCER = "0" * SEQUENCER_WIDTH


def normalise_sequencer(value: str | None) -> str:
    """Upper-case hex, left-padded to :data:`SEQUENCER_WIDTH` (a missing one is the lowest possible)."""
    raw = (value or "").strip().upper()
    if not raw:
        return ZERO_SEQUENCER
    int(raw, 16)  # ValueError on anything that is not hexadecimal
    return raw.rjust(SEQUENCER_WIDTH, "0")


class ObjectEvent(Record):
    """One object-level change: ``created`` (any ObjectCreated:*) or ``removed`` (any ObjectRemoved:*)."""

    kind: Literal["created", "removed"]
    bucket: str
    key: str
    sequencer: str = ZERO_SEQUENCER
    etag: str = ""
    size: int = 0
    event_name: str = ""
    event_time: str = ""
    #: Set by the reconciler: repair the key to what S3 holds even though no newer sequencer exists.
    reconcile: bool = False
    #: Set by the ingest function itself: the rest of a large object, handed to a fresh invocation.
    continuation: bool = False
    #: Set by the ingest function itself: delete the rows retired at this epoch, committed at
    #: ``committed_at_ms``, once ``ingestion.retire_grace_s`` has passed (``shardrag.visibility``).
    retired: int = 0
    committed_at_ms: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def source_key(self) -> str:
        """``bucket/key``: the registry's identity of an object."""
        return f"{self.bucket}/{self.key}"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _record_to_event(record: Mapping[str, Any]) -> ObjectEvent | None:
    name = str(record.get("eventName", ""))
    if name.startswith("ObjectCreated:"):
        kind: Literal["created", "removed"] = "created"
    elif name.startswith("ObjectRemoved:"):
        kind = "removed"
    else:  # restore, replication, lifecycle transitions: nothing changes in the index
        return None
    s3 = record["s3"]
    obj = s3["object"]
    marker = record.get("shardrag") or {}
    return ObjectEvent(
        kind=kind,
        bucket=str(s3["bucket"]["name"]),
        # Keys arrive URL-encoded with '+' for spaces (quote_plus), '/' as %2F in moto.
        key=unquote_plus(str(obj["key"])),
        sequencer=normalise_sequencer(obj.get("sequencer")),
        etag=str(obj.get("eTag", "")).strip('"'),
        size=int(obj.get("size", 0) or 0),
        event_name=name,
        event_time=str(record.get("eventTime", "")),
        reconcile=bool(marker.get("reconcile", False)),
        continuation=bool(marker.get("continuation", False)),
        retired=int(marker.get("retired", 0) or 0),
        committed_at_ms=int(marker.get("committed_at_ms", 0) or 0),
    )


def parse_notification(body: str | Mapping[str, Any]) -> list[ObjectEvent]:
    """The object events in one SQS message body (an S3 notification; ``s3:TestEvent`` yields none).

    Raises ``ValueError`` for a body that is not an S3 notification at all.
    """
    data = json.loads(body) if isinstance(body, str) else body
    if not isinstance(data, Mapping):
        raise ValueError("notification body is not a JSON object")
    if data.get("Event") == "s3:TestEvent":
        # Sent once when a bucket's notification configuration is saved; carries no object.
        return []
    records = data.get("Records")
    if not isinstance(records, list):
        raise ValueError("notification body has no Records list")
    events = []
    for record in records:
        event = _record_to_event(record)
        if event is not None:
            events.append(event)
    return events


def iter_sqs_bodies(event: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(messageId, body)`` of each record of an SQS-triggered Lambda event."""
    for record in event.get("Records", []):
        yield str(record.get("messageId", "")), str(record.get("body", ""))


def notification(events: list[ObjectEvent]) -> dict[str, Any]:
    """An S3 notification body for ``events`` (what the reconciler and tests enqueue)."""
    records = []
    for e in events:
        records.append(
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": e.event_name or ("ObjectCreated:Put" if e.kind == "created" else "ObjectRemoved:Delete"),
                "eventTime": e.event_time,
                "s3": {
                    "bucket": {"name": e.bucket, "arn": f"arn:aws:s3:::{e.bucket}"},
                    "object": {"key": quote_plus(e.key), "size": e.size, "eTag": e.etag, "sequencer": e.sequencer},
                },
                "shardrag": {
                    "reconcile": e.reconcile,
                    "continuation": e.continuation,
                    "retired": e.retired,
                    "committed_at_ms": e.committed_at_ms,
                },
            }
        )
    return {"Records": records}
