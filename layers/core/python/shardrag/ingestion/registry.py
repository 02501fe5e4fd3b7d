"""The document registry: one DynamoDB table recording what the index holds for every object and document.

Two kinds of item share the table (partition key ``pk``):

* ``src#<bucket>/<key>`` — an object: ETag, S3 sequencer, status (``processing`` | ``indexed`` | ``deleted``
  | ``failed``), reason code, document and chunk counts, and while a worker indexes it a lease
  (``owner``, ``lease_until``).
* ``stats#<id>`` — a BM25 term-statistics delta a worker could not apply (the journal of
  :class:`~shardrag.term_stats.TermStatsTracker`), listed through the same GSI under ``doc_source``
  ``#term-stats-journal`` (which no object key can be: every object key holds a "/").
* ``doc#<doc_id>`` — a document (a file, or one line of a JSON Lines file): the object it came from, its
  version, sequencer, shards (every shard that may hold one of its chunks; items written before centroid
  placement carry only ``shard``), chunk count and status. A GSI on ``doc_source`` lists the documents of an
  object, which is how deleting a bulk file removes all of its documents.

A document's life, in its ``status``:

* ``writing`` — recorded *before* any of its chunks are written (write-ahead), with every shard that may hold
  them, and updated after each part of a large object (``parts_done``, ``chunk_count``). A chunk therefore
  never exists without a record saying where it is, so a document with no record has no chunks to sweep.
* ``indexed`` — every part written and the previous version's chunks swept: only now may a replay of the same
  version take the "unchanged" shortcut (a ``writing`` document at the same version resumes instead).
* ``deleting`` — recorded before its chunks are removed (a delete, an overwrite that no longer produces it, a
  rejection), so a crash mid-removal can never leave an ``indexed`` record over missing chunks (a later upload
  of the same version would then skip it as unchanged).
* ``deleted`` / ``failed`` — its chunks were removed before the status was written.

Every document write while an event is processed is fenced by the event's lease (a transaction whose
condition checks the object item's sequencer and owner), so a worker that lost its lease cannot record
anything.

Order safety lives in :meth:`DynamoDbRegistry.claim`: a conditional write that only succeeds for an event
whose sequencer is newer than the recorded one (or equal, for the worker re-trying its own claim), and only
when no other worker holds a live lease on the key, unless that worker has marked its lease ``preemptible``:
while it only adds rows of one document's version (never deletes), a newer version of the object may take the
key at once instead of waiting for a stale version to be embedded to the end. The running worker learns it at
its next fenced write and stops; what it wrote meanwhile is swept by the newer run or repaired
(``IngestService._superseded``). A tombstone (``deleted`` with the delete's sequencer)
therefore stops a late create from resurrecting the object.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from typing import Any, Literal

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError
from shardrag.ingestion.errors import Reason, Retryable
from shardrag.ingestion.events import ObjectEvent
from shardrag.records import Record
from shardrag.term_stats import JournalEntry, decode_stats, encode_stats

SourceStatus = Literal["processing", "indexed", "deleted", "failed"]
DocumentStatus = Literal["writing", "indexed", "deleting", "deleted", "failed"]
TERMINAL: frozenset[str] = frozenset({"indexed", "deleted", "failed"})
#: Document statuses whose chunks may be in the store.
LIVE: frozenset[str] = frozenset({"writing", "indexed", "deleting"})
#: Items per DynamoDB transaction: the service limit is 100, one of which is the lease check.
_TRANSACTION_ITEMS = 99
SOURCE_INDEX = "by_source"
JOURNAL_SOURCE = "#term-stats-journal"
_SER = TypeSerializer()
_DES = TypeDeserializer()


def _item(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _SER.serialize(v) for k, v in values.items() if v is not None}


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    out = {k: _DES.deserialize(v) for k, v in item.items()}
    # DynamoDB numbers come back as Decimal; every number stored here is an integer.
    return {k: _integers(v) for k, v in out.items()}


def _integers(value: Any) -> Any:
    if type(value).__name__ == "Decimal":
        return int(value)
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


def table_definition(table_name: str) -> dict[str, Any]:
    """``CreateTable`` arguments (the CDK construct mirrors them; the local runtime calls them)."""
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "doc_source", "AttributeType": "S"},
        ],
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": SOURCE_INDEX,
                "KeySchema": [{"AttributeName": "doc_source", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


class SourceState(Record):
    source_key: str
    uri: str = ""
    etag: str = ""
    sequencer: str = ""
    status: SourceStatus = "processing"
    reason: str = ""
    error: str = ""
    doc_count: int = 0
    chunk_count: int = 0
    rejected_lines: int = 0
    owner: str = ""
    lease_until_ms: int = 0
    #: The lease holder only adds rows of one document now: a newer event may take the key from it.
    preemptible: bool = False
    updated_at_ms: int = 0


class DocumentState(Record):
    doc_id: str
    source_key: str
    #: The id users know the document by: the object key, or a bulk line's ``_id``.
    external_id: str = ""
    uri: str = ""
    version: str = ""
    sequencer: str = ""
    #: The primary shard (hash placement: the only one).
    shard: int = 0
    #: Every shard that holds one of the document's chunks (centroid placement spreads and replicates them).
    shards: list[int] = []
    chunk_count: int = 0
    status: DocumentStatus = "indexed"
    reason: str = ""
    tenant: str = "default"
    updated_at_ms: int = 0
    #: ``writing``: parts of the object already written (a retry resumes after them) ...
    parts_done: int = 0
    #: ... under this reading plan (parser, part size, chunking); a different plan restarts instead.
    plan: str = ""
    #: The embedding model that computed this version's vectors (``DocumentIndexer.model_id``): a later version
    #: reuses them for unchanged chunks only if its model is the same. Empty (records before it existed): never.
    model: str = ""
    #: No longer written (rows name their model themselves: ``shardrag.row_identity``); read from older records.
    reusable_versions: list[str] = []
    #: The mean chunk length this version's BM25 weights use (``indexing.MeanLength``): fixed by its first part,
    #: recorded so that a resumed write weighs the rest alike (``repr`` of the float: DynamoDB numbers come back
    #: as integers here; empty: not yet fixed).
    lexical_mean: str = ""
    #: ``writing``: the epoch its rows are written under, open until the version is complete
    #: (``shardrag.visibility``); a later run on the document adopts it while it is open. 0 once indexed.
    epoch: int = 0

    @property
    def live(self) -> bool:
        """Whether the document's chunks may be in the store."""
        return self.status in LIVE

    def held_shards(self) -> list[int]:
        """Where the document's chunks are: ``shards``, or ``[shard]`` for items written before it existed."""
        return list(self.shards) if self.shards else [self.shard]


class Claim(Enum):
    ACQUIRED = "acquired"
    #: A newer event for the key was already recorded: this one changes nothing.
    STALE = "stale"
    #: This very event was already processed to the end.
    DUPLICATE = "duplicate"
    #: Another worker is processing the key now: retry later.
    BUSY = "busy"


class LeaseLost(Exception):
    """Another worker owns the object's key now (a newer event, or a redelivery after this lease expired):
    whatever this worker still meant to write must not be written."""


def _dependency(exc: Exception, what: str) -> Retryable:
    return Retryable(Reason.DEPENDENCY, f"DynamoDB {what}: {type(exc).__name__}: {exc}")


def _is_conditional(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) == "ConditionalCheckFailedException"


class DynamoDbRegistry:
    """The registry on a DynamoDB table (moto's locally). Every DynamoDB failure is :class:`Retryable`."""

    def __init__(self, client: Any, table_name: str, *, clock: Callable[[], float] = time.time) -> None:
        self._db = client
        self.table_name = table_name
        self._clock = clock

    def now_ms(self) -> int:
        """The registry's time (its clock: injected in tests), in milliseconds."""
        return self._now_ms()

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- objects ---------------------------------------------------------------------------------------
    def get_source(self, source_key: str) -> SourceState | None:
        try:
            r = self._db.get_item(
                TableName=self.table_name, Key=_item({"pk": f"src#{source_key}"}), ConsistentRead=True
            )
        except (ClientError, BotoCoreError) as exc:
            raise _dependency(exc, "get_item") from exc
        if "Item" not in r:
            return None
        data = _plain(r["Item"])
        return SourceState.model_validate({k: v for k, v in data.items() if k in SourceState.model_fields})

    def claim(self, event: ObjectEvent, *, owner: str, lease_s: float) -> tuple[Claim, SourceState | None]:
        """Take the key for ``event`` (see the module docstring); returns the outcome and the state before."""
        now = self._now_ms()
        names = {
            "#st": "status",
            "#seq": "sequencer",
            "#own": "owner",
            "#lease": "lease_until_ms",
            "#pre": "preemptible",
        }
        values = {
            ":seq": event.sequencer,
            ":proc": "processing",
            ":now": now,
            ":owner": owner,
            ":lease": now + int(lease_s * 1000),
            ":key": event.source_key,
            ":uri": event.uri,
            ":etag": event.etag,
            ":kind": "source",
            ":no": False,
        }
        if event.reconcile:
            # A repair has no newer sequencer: it may act only if nothing changed since the reconciler looked.
            condition = "attribute_not_exists(pk) OR (#seq = :seq AND (#st <> :proc OR #lease < :now OR #own = :owner))"
        else:
            values[":yes"] = True
            condition = (
                "attribute_not_exists(pk)"
                " OR (#seq < :seq AND (#st <> :proc OR #lease < :now OR #pre = :yes))"
                " OR (#seq = :seq AND #st = :proc AND (#lease < :now OR #own = :owner))"
            )
        try:
            self._db.update_item(
                TableName=self.table_name,
                Key=_item({"pk": f"src#{event.source_key}"}),
                UpdateExpression=(
                    "SET #st = :proc, #seq = :seq, #own = :owner, #lease = :lease, source_key = :key, uri = :uri,"
                    " etag = :etag, kind = :kind, updated_at_ms = :now, #pre = :no"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=_item(values),
            )
        except ClientError as exc:
            if not _is_conditional(exc):
                raise _dependency(exc, "claim") from exc
            before = self.get_source(event.source_key)
            return self._why_not(event, before, now), before
        except BotoCoreError as exc:
            raise _dependency(exc, "claim") from exc
        return Claim.ACQUIRED, None

    @staticmethod
    def _why_not(event: ObjectEvent, before: SourceState | None, now_ms: int) -> Claim:
        if before is None:
            return Claim.BUSY  # deleted between the write and the read: just try again
        if before.sequencer > event.sequencer or (event.reconcile and before.sequencer != event.sequencer):
            return Claim.STALE
        if before.sequencer == event.sequencer and before.status in TERMINAL:
            return Claim.DUPLICATE
        return Claim.BUSY if before.status == "processing" and before.lease_until_ms >= now_ms else Claim.STALE

    def finish(
        self,
        event: ObjectEvent,
        *,
        owner: str,
        status: SourceStatus,
        reason: str = "",
        error: str = "",
        doc_count: int = 0,
        chunk_count: int = 0,
        rejected_lines: int = 0,
        etag: str | None = None,
    ) -> bool:
        """Record the outcome and release the lease; ``False`` if the lease was lost to a newer event."""
        try:
            self._db.update_item(
                TableName=self.table_name,
                Key=_item({"pk": f"src#{event.source_key}"}),
                UpdateExpression=(
                    "SET #st = :st, reason = :reason, #err = :err, doc_count = :docs, chunk_count = :chunks,"
                    " rejected_lines = :rej, etag = :etag, updated_at_ms = :now REMOVE #own, #lease"
                ),
                ConditionExpression="#seq = :seq AND #own = :owner",
                ExpressionAttributeNames={
                    "#st": "status",
                    "#err": "error",
                    "#own": "owner",
                    "#lease": "lease_until_ms",
                    "#seq": "sequencer",
                },
                ExpressionAttributeValues=_item(
                    {
                        ":st": status,
                        ":reason": reason,
                        ":err": error[:1000],
                        ":docs": doc_count,
                        ":chunks": chunk_count,
                        ":rej": rejected_lines,
                        ":etag": etag if etag is not None else event.etag,
                        ":now": self._now_ms(),
                        ":seq": event.sequencer,
                        ":owner": owner,
                    }
                ),
            )
        except ClientError as exc:
            if _is_conditional(exc):
                return False
            raise _dependency(exc, "finish") from exc
        except BotoCoreError as exc:
            raise _dependency(exc, "finish") from exc
        return True

    def renew(self, event: ObjectEvent, *, owner: str, lease_s: float) -> None:
        """Extend the lease before the next stretch of work; :class:`LeaseLost` if it is no longer ours."""
        if not self._set_lease(event, owner, self._now_ms() + int(lease_s * 1000), "renew"):
            raise LeaseLost(f"{event.source_key}: lease lost")

    def preemptible(self, event: ObjectEvent, *, owner: str, allowed: bool) -> None:
        """Say whether a newer event may take the key from this worker now (see the module docstring);
        :class:`LeaseLost` if the key is no longer ours."""
        if not self._set_if_owner(event, owner, "preemptible", allowed, "preemptible"):
            raise LeaseLost(f"{event.source_key}: lease lost")

    def _set_lease(self, event: ObjectEvent, owner: str, until_ms: int, what: str) -> bool:
        """Move the lease's end if ``owner`` still holds the key at this event; ``False`` if it does not."""
        return self._set_if_owner(event, owner, "lease_until_ms", until_ms, what)

    def _set_if_owner(self, event: ObjectEvent, owner: str, attribute: str, value: Any, what: str) -> bool:
        """Set one attribute of the object item if ``owner`` still holds the key at this event."""
        try:
            self._db.update_item(
                TableName=self.table_name,
                Key=_item({"pk": f"src#{event.source_key}"}),
                UpdateExpression="SET #attr = :value",
                ConditionExpression="#seq = :seq AND #own = :owner",
                ExpressionAttributeNames={"#attr": attribute, "#seq": "sequencer", "#own": "owner"},
                ExpressionAttributeValues=_item({":value": value, ":seq": event.sequencer, ":owner": owner}),
            )
        except ClientError as exc:
            if _is_conditional(exc):
                return False
            raise _dependency(exc, what) from exc
        except BotoCoreError as exc:
            raise _dependency(exc, what) from exc
        return True

    def sources(self) -> Iterator[SourceState]:
        """Every object item (the reconciler compares them with the bucket listing)."""
        paginator = self._db.get_paginator("scan")
        try:
            for page in paginator.paginate(
                TableName=self.table_name,
                FilterExpression="kind = :k",
                ExpressionAttributeValues=_item({":k": "source"}),
                ConsistentRead=True,
            ):
                for raw in page.get("Items", []):
                    data = _plain(raw)
                    yield SourceState.model_validate({k: v for k, v in data.items() if k in SourceState.model_fields})
        except (ClientError, BotoCoreError) as exc:
            raise _dependency(exc, "scan") from exc

    # -- documents -------------------------------------------------------------------------------------
    def get_documents(self, doc_ids: Iterable[str]) -> dict[str, DocumentState]:
        keys = list(dict.fromkeys(doc_ids))
        found: dict[str, DocumentState] = {}
        try:
            for start in range(0, len(keys), 100):
                request: dict[str, Any] = {
                    self.table_name: {
                        "Keys": [_item({"pk": f"doc#{k}"}) for k in keys[start : start + 100]],
                        "ConsistentRead": True,
                    }
                }
                while request:
                    r = self._db.batch_get_item(RequestItems=request)
                    for raw in r.get("Responses", {}).get(self.table_name, []):
                        state = self._document(raw)
                        found[state.doc_id] = state
                    request = r.get("UnprocessedKeys") or {}
        except (ClientError, BotoCoreError) as exc:
            raise _dependency(exc, "batch_get_item") from exc
        return found

    def put_documents(self, states: Iterable[DocumentState], *, lease: tuple[ObjectEvent, str] | None = None) -> None:
        """Write document items. With ``lease`` (the event and its owner), each batch is one transaction that
        also checks the object item still carries that event's sequencer and owner: :class:`LeaseLost` if not.
        Without it (maintenance outside any event, e.g. a rebalance), in plain batches of 25."""
        now = self._now_ms()
        items = [
            _item(
                {
                    "pk": f"doc#{s.doc_id}",
                    "kind": "document",
                    "doc_source": s.source_key,
                    **s.model_dump(exclude={"source_key"}),
                    "updated_at_ms": now,
                }
            )
            for s in states
        ]
        if lease is not None:
            self._put_fenced(items, *lease)
            return
        try:
            for start in range(0, len(items), 25):
                request = {self.table_name: [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]}
                while request:
                    r = self._db.batch_write_item(RequestItems=request)
                    request = r.get("UnprocessedItems") or {}
        except (ClientError, BotoCoreError) as exc:
            raise _dependency(exc, "batch_write_item") from exc

    def _put_fenced(self, items: list[dict[str, Any]], event: ObjectEvent, owner: str) -> None:
        check = {
            "ConditionCheck": {
                "TableName": self.table_name,
                "Key": _item({"pk": f"src#{event.source_key}"}),
                "ConditionExpression": "#seq = :seq AND #own = :owner",
                "ExpressionAttributeNames": {"#seq": "sequencer", "#own": "owner"},
                "ExpressionAttributeValues": _item({":seq": event.sequencer, ":owner": owner}),
            }
        }
        for start in range(0, len(items), _TRANSACTION_ITEMS):
            batch = items[start : start + _TRANSACTION_ITEMS]
            try:
                self._db.transact_write_items(
                    TransactItems=[check, *({"Put": {"TableName": self.table_name, "Item": i}} for i in batch)]
                )
            except ClientError as exc:
                reasons = exc.response.get("CancellationReasons") or []
                if reasons and str(reasons[0].get("Code", "")) == "ConditionalCheckFailed":
                    raise LeaseLost(f"{event.source_key}: lease lost") from None
                raise _dependency(exc, "transact_write_items") from exc
            except BotoCoreError as exc:
                raise _dependency(exc, "transact_write_items") from exc

    def documents_of(self, source_key: str) -> list[DocumentState]:
        """Documents recorded for an object (any status)."""
        out: list[DocumentState] = []
        paginator = self._db.get_paginator("query")
        try:
            for page in paginator.paginate(
                TableName=self.table_name,
                IndexName=SOURCE_INDEX,
                KeyConditionExpression="doc_source = :s",
                ExpressionAttributeValues=_item({":s": source_key}),
            ):
                out.extend(self._document(raw) for raw in page.get("Items", []))
        except (ClientError, BotoCoreError) as exc:
            raise _dependency(exc, "query") from exc
        return out

    @staticmethod
    def _document(raw: dict[str, Any]) -> DocumentState:
        data = _plain(raw)
        data["source_key"] = data.get("doc_source", "")
        return DocumentState.model_validate({k: v for k, v in data.items() if k in DocumentState.model_fields})

    def release(self, event: ObjectEvent, *, owner: str) -> None:
        """Give the lease back after a transient failure so that the retry (or a newer event) need not wait for
        it to expire; the key stays ``processing`` at this sequencer. A lease already lost needs no release."""
        self._set_lease(event, owner, 0, "release")


class DynamoDbDeltaJournal:
    """The term-statistics journal (:class:`~shardrag.term_stats.DeltaJournal`) in the registry table: another
    service than the artefact store whose failure puts a delta here, and one every ingest worker can reach."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._db = client
        self.table_name = table_name

    def put(self, entry: JournalEntry) -> None:
        self._db.put_item(
            TableName=self.table_name,
            Item=_item(
                {
                    "pk": f"stats#{entry.entry_id}",
                    "kind": "stats-delta",
                    "doc_source": JOURNAL_SOURCE,
                    "shard": entry.shard,
                    "scope": entry.scope,
                    "delta": encode_stats(entry.delta),
                    "written_at": int(entry.written_at),
                }
            ),
        )

    def entries(self) -> list[JournalEntry]:
        out: list[JournalEntry] = []
        for page in self._db.get_paginator("query").paginate(
            TableName=self.table_name,
            IndexName=SOURCE_INDEX,
            KeyConditionExpression="doc_source = :s",
            ExpressionAttributeValues=_item({":s": JOURNAL_SOURCE}),
        ):
            for raw in page.get("Items", []):
                data = _plain(raw)
                out.append(
                    JournalEntry(
                        entry_id=str(data["pk"]).removeprefix("stats#"),
                        shard=int(data["shard"]),
                        scope=str(data.get("scope", "")),
                        delta=decode_stats(bytes(data["delta"].value)),
                        written_at=float(data["written_at"]),
                    )
                )
        return out

    def remove(self, entry_id: str) -> None:
        self._db.delete_item(TableName=self.table_name, Key=_item({"pk": f"stats#{entry_id}"}))
