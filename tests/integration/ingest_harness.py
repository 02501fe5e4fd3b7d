"""A whole ingestion system for fault-injection tests: moto's S3 and DynamoDB, real Milvus Lite shards behind
the BM25 term accounting, the real ingest service, and SQS messages delivered to the real ingest handler.

Faults are injected at the boundaries where production fails: every shard call, every S3 and DynamoDB call and
every term-statistics artefact read or write counts as one *step*; :class:`FaultPlan` fails the n-th step with a
transient error (what a throttled or unreachable dependency raises) or kills the worker there
(:class:`WorkerCrash`, which no ``except Exception`` catches: nothing is released, nothing held in memory
survives, and the message comes back after its visibility timeout, as after a Lambda timeout).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ClientError
from shardrag import services
from shardrag.artifacts import Artifact, FileArtifactStore
from shardrag.bm25 import Bm25Encoder
from shardrag.chunking import Chunker, word_spans
from shardrag.config import Bm25Settings, IndexSettings, IngestionSettings, ShardEndpoint
from shardrag.embedding.hashing import HashingEmbedder
from shardrag.indexing import DocumentIndexer
from shardrag.ingestion import (
    DynamoDbRegistry,
    IngestService,
    ObjectEvent,
    S3ObjectSource,
    normalise_sequencer,
    notification,
    table_definition,
)
from shardrag.ingestion.registry import DynamoDbDeltaJournal
from shardrag.ingestion.service import Requeue
from shardrag.records import EmbeddedChunk, Snapshot, StoredTerms
from shardrag.store.accounting import TermAccountingStore
from shardrag.store.base import VectorStore
from shardrag.store.memory import InMemoryVectorStore
from shardrag.store.milvus import MilvusVectorStore
from shardrag.store.wrapper import StoreWrapper
from shardrag.term_stats import TermStatsStore, TermStatsTracker, rebuild_term_stats, stats_name
from shardrag.visibility import DynamoDbEpochClock, EpochClock

ROOT = Path(__file__).resolve().parents[2]
DIMENSION = 384


class WorkerCrash(BaseException):
    """The worker process died here (BaseException: no handler in the code under test may swallow it)."""


class FaultPlan:
    """Counts steps; fails the ``at``-th one from now, once: ``transient`` (the call fails), ``crash`` (the worker
    dies before the call) or ``lost`` (the call lands and its response is lost: an error after the effect; only
    where the step's caller supports it, elsewhere it is ``transient``)."""

    def __init__(self) -> None:
        self.steps = 0
        self._at: int | None = None
        self._kind = "transient"
        self._only: str = ""
        self.fired: list[str] = []
        self._before: list[Callable[[str], object]] = []
        self._after: list[Callable[[str], object]] = []

    def arm(self, at: int, kind: str = "transient", only: str = "") -> None:
        """Fail the ``at``-th step (1 = the next) whose name starts with ``only``."""
        self._at, self._kind, self._only, self._seen = at, kind, only, 0

    def disarm(self) -> None:
        self._at = None

    @contextmanager
    def watching(self, hook: Callable[[str], object], *, before: bool = False) -> Iterator[None]:
        """Call ``hook(step name)`` at every step in this block: after the step's fault logic (not at all if a
        fault fires there), or ``before`` it. A hook may drive the system (upload, deliver, move the clock)."""
        hooks = self._before if before else self._after
        hooks.append(hook)
        try:
            yield
        finally:
            hooks.remove(hook)

    def step(self, name: str, transient: Callable[[], BaseException], *, can_lose: bool = False) -> bool:
        """Count a step; raise its fault if it is the armed one. ``True``: perform the call, then raise
        ``transient()`` (a lost response), for a caller that passed ``can_lose``."""
        for hook in list(self._before):
            hook(name)
        lost = self._fault(name, transient, can_lose=can_lose)
        for hook in list(self._after):
            hook(name)
        return lost

    def _fault(self, name: str, transient: Callable[[], BaseException], *, can_lose: bool) -> bool:
        self.steps += 1
        if self._at is None or not name.startswith(self._only):
            return False
        if self._kind == "crash" and name.startswith("stats."):
            # A term-statistics update is the tail of one shard write (the rows are written, the table not yet):
            # a worker killed there loses that write's delta, the one case the accounting does not cover (README,
            # "Integrity"; `shardrag rebuild-term-stats` recounts). Crashes land between calls, never inside one.
            return False
        self._seen += 1
        if self._seen < self._at:
            return False
        self._at = None
        self.fired.append(f"{self._kind}@{name}")
        if self._kind == "crash":
            raise WorkerCrash(name)
        if self._kind == "lost" and can_lose:
            return True
        raise transient()


def _client_error(operation: str) -> Callable[[], BaseException]:
    return lambda: ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "injected"}}, operation)


class FaultyClient:
    """A boto3 client whose calls are steps of ``plan``."""

    def __init__(self, inner: Any, service: str, plan: FaultPlan) -> None:
        self._inner, self._service, self._plan = inner, service, plan

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name in ("get_paginator", "meta"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._plan.step(f"{self._service}.{name}", _client_error(name))
            return attr(*args, **kwargs)

        return call


class FaultyStore(StoreWrapper):
    """A shard whose every call is a step of ``plan`` (a transient failure is a dropped connection)."""

    def __init__(self, inner: VectorStore, plan: FaultPlan, shard: int) -> None:
        super().__init__(inner)
        self._plan, self._name = plan, f"store{shard}"

    def _step(self, what: str) -> None:
        self._plan.step(f"store.{what}", lambda: ConnectionError(f"injected: {self._name}.{what}"))

    def upsert(self, chunks: Sequence[EmbeddedChunk]) -> int:
        self._step("upsert")
        return self._inner.upsert(chunks)

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        self._step("delete_chunks")
        return self._inner.delete_chunks(chunk_ids)

    def chunk_ids(self, doc_id: str, *, keep_version: str | None = None) -> list[str]:
        self._step("chunk_ids")
        return self._inner.chunk_ids(doc_id, keep_version=keep_version)

    def stored_terms(self, chunk_ids: Sequence[str]) -> dict[str, StoredTerms]:
        self._step("stored_terms")
        return self._inner.stored_terms(chunk_ids)

    def stored_chunks(self, doc_id: str, *, positions: tuple[int, int] | None = None) -> list[EmbeddedChunk]:
        self._step("stored_chunks")
        return self._inner.stored_chunks(doc_id, positions=positions)

    def row_epochs(self, doc_id: str) -> dict[str, tuple[int, int]]:
        self._step("row_epochs")
        return self._inner.row_epochs(doc_id)

    def retired_at(self, epoch: int) -> list[str]:
        self._step("retired_at")
        return self._inner.retired_at(epoch)

    def retire(self, chunk_ids: Sequence[str], epoch: int) -> int:
        self._step("retire")
        return self._inner.retire(chunk_ids, epoch)

    def flush(self) -> None:
        self._step("flush")
        self._inner.flush()


class FaultyArtifacts(FileArtifactStore):
    def __init__(self, root: Path, plan: FaultPlan) -> None:
        super().__init__(root)
        self._plan = plan

    def get(self, name: str) -> Artifact | None:
        self._plan.step("stats.get", lambda: OSError("injected: artefact read"))
        return super().get(name)

    def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
        error = lambda: OSError("injected: artefact write")  # noqa: E731
        lost = self._plan.step("stats.put", error, can_lose=True)
        landed = super().put(name, data, expected_etag=expected_etag)
        if lost:
            raise error()
        return landed


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def ingest_handler() -> Any:
    """The deployed ingest handler module, loaded from its file as Lambda loads it (its cold-start call to
    ``services.ingest_service`` is answered by whatever the test installed)."""
    spec = importlib.util.spec_from_file_location("shardrag_ingest_handler", ROOT / "functions/ingest/handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    """What Powertools and the handler read of a Lambda context; ``remaining_s`` stands in for the clock."""

    remaining_s: Callable[[], float] = staticmethod(lambda: 300.0)
    function_name = "ingest"
    memory_limit_in_mb = 3008
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ingest"
    function_version = "$LATEST"
    log_group_name = log_stream_name = ""

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_s() * 1000)


class MilvusShards:
    """Milvus Lite shards opened once per test module and emptied between scenarios (opening is the slow part)."""

    def __init__(self, root: Path, count: int) -> None:
        self.milvus = [
            MilvusVectorStore(
                ShardEndpoint(uri=str(root / f"shard-{i}.db"), collection="c"),
                shard=i,
                dimension=DIMENSION,
                index=IndexSettings(),
            )
            for i in range(count)
        ]

    def clear(self) -> None:
        for store in self.milvus:
            ids = store._query_ids('chunk_id != ""')
            if ids:
                store.delete_chunks(ids)
            store.flush()

    def rows(self) -> dict[int, set[tuple[str, str, str, str, str]]]:
        """Every stored chunk, per shard: (chunk id, version, tenant, external id, text)."""
        return {
            i: {
                (c.chunk.chunk_id, c.chunk.version, c.chunk.tenant, c.chunk.external_id, c.chunk.text)
                for batch in store.scan()
                for c in batch
            }
            for i, store in enumerate(self.milvus)
        }

    def searchable(self, snapshot: Snapshot | None = None) -> tuple[set[int], set[str]]:
        """What a reader can find now, in one scan: the term ids some row's BM25 side holds, and every row's text
        (of the rows ``snapshot`` sees, if given)."""
        terms: set[int] = set()
        texts: set[str] = set()
        for store in self.milvus:
            for batch in store.scan():
                for row in batch:
                    if snapshot is not None and not snapshot.sees(row.chunk.epoch_from, row.chunk.epoch_to):
                        continue
                    texts.add(row.chunk.text)
                    if row.sparse is not None:
                        terms.update(row.sparse.indices)
        return terms, texts

    def close(self) -> None:
        for store in self.milvus:
            store.close()


class IngestSystem:
    """One bucket, one registry table, the shards, and a queue of SQS messages for the ingest handler."""

    def __init__(
        self,
        shards: MilvusShards,
        workdir: Path,
        settings: IngestionSettings,
        *,
        per_tenant: bool = False,
        plan: FaultPlan | None = None,
        journal: bool = True,
    ) -> None:
        """``journal``: give the statistics tracker its journal (False: a delta it cannot apply lives only in the
        worker's memory, as before the journal; kept to show what the journal is for)."""
        self.journal = journal
        self.shards = shards
        if "retire_grace_s" not in settings.model_fields_set:
            # Retired rows deleted at the commit unless a test asks for the grace (and its delayed messages).
            settings = settings.model_copy(update={"retire_grace_s": 0})
        self.settings = settings
        self.per_tenant = per_tenant
        self.plan = plan or FaultPlan()
        self.clock = Clock()
        self.bucket = f"docs-{uuid.uuid4().hex[:8]}"
        self.table = f"registry-{uuid.uuid4().hex[:8]}"
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket=self.bucket)
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        self.ddb.create_table(**table_definition(self.table))
        self._tables = [self.table]
        self.artifacts_dir = workdir / f"index-{uuid.uuid4().hex[:8]}"
        self.embedder = HashingEmbedder(DIMENSION)
        self.queue: list[tuple[str, str]] = []
        self._sequence = itertools.count(1)
        self.stats = TermStatsStore(
            FaultyArtifacts(self.artifacts_dir, self.plan), [stats_name("c", i) for i in range(len(shards.milvus))]
        )
        #: The deployed epoch clock, an item of the registry table, behind the same faults.
        self.epochs = DynamoDbEpochClock(FaultyClient(self.ddb, "ddb", self.plan), self.table)
        self.new_process()

    def snapshot(self) -> Snapshot:
        """What a query that starts now sees (read past the faults: readers are not under test here)."""
        return DynamoDbEpochClock(self.ddb, self.table).snapshot()

    def __enter__(self) -> IngestSystem:
        """Answer the handler's ``services.ingest_service()`` with this system's (current) service."""
        self._original = services.ingest_service
        services.ingest_service = lambda: self.service  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        services.ingest_service = self._original  # type: ignore[assignment]
        # moto's backends are process-wide: another test's local runtime (which snapshots every bucket) must not
        # find this system's objects.
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])
        self.s3.delete_bucket(Bucket=self.bucket)
        for table in self._tables:
            self.ddb.delete_table(TableName=table)

    # -- the worker process (rebuilt after a crash: nothing it held in memory survives) -------------------
    def new_process(self) -> None:
        # The journal of deltas a flush could not apply lives in the registry table, behind the same faults.
        journal = DynamoDbDeltaJournal(FaultyClient(self.ddb, "ddb", self.plan), self.table)
        tracker = TermStatsTracker(lambda: self.stats, lambda: journal if self.journal else None, clock=self.clock)
        self.stores: list[VectorStore] = [
            TermAccountingStore(FaultyStore(m, self.plan, i), shard=i, tracker=tracker, per_tenant=self.per_tenant)
            for i, m in enumerate(self.shards.milvus)
        ]
        self.service = build_service(
            self.settings,
            self.stores,
            self.embedder,
            DynamoDbRegistry(FaultyClient(self.ddb, "ddb", self.plan), self.table, clock=self.clock),
            S3ObjectSource(FaultyClient(self.s3, "s3", self.plan)),
            requeue=self.send,
            epochs=self.epochs,
        )

    # -- the bucket -------------------------------------------------------------------------------------
    def _event(self, kind: str, key: str, etag: str = "", size: int = 0) -> ObjectEvent:
        return ObjectEvent(
            kind=kind,  # type: ignore[arg-type]
            bucket=self.bucket,
            key=key,
            etag=etag,
            size=size,
            sequencer=normalise_sequencer(f"{next(self._sequence):x}"),
            event_name="ObjectCreated:Put" if kind == "created" else "ObjectRemoved:Delete",
        )

    def put(self, key: str, body: bytes, **extra: Any) -> ObjectEvent:
        etag = self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)["ETag"].strip('"')
        event = self._event("created", key, etag, len(body))
        self.send(event)
        return event

    def delete(self, key: str) -> ObjectEvent:
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        event = self._event("removed", key)
        self.send(event)
        return event

    def send(self, event: ObjectEvent, *, delay_s: int = 0) -> None:
        """Queue ``event`` (a delay is not modelled: the service checks a retired-row deletion's due time itself,
        by the registry's clock, which ``drain`` moves on when a delivery asks for a retry)."""
        self.queue.append((str(uuid.uuid4()), json.dumps(notification([event]))))

    # -- delivery through the real handler --------------------------------------------------------------
    def deliver(self, index: int = 0, *, keep: bool = False) -> str:
        """Hand the ``index``-th queued message to the ingest handler: ``ok`` (deleted from the queue),
        ``retry`` (reported as a batch item failure: SQS redelivers it) or ``crash`` (the worker died: the
        message comes back, the process is replaced). ``keep``: leave a copy queued (a duplicate delivery)."""
        message_id, body = self.queue[index]
        handler = _handler()
        event = {"Records": [{"messageId": message_id, "body": body, "eventSource": "aws:sqs", "attributes": {}}]}
        try:
            result = handler.handler(event, self.context())
        except WorkerCrash:
            self.new_process()
            return "crash"
        except BatchProcessingError:
            return "retry"  # every record failed: Powertools fails the invocation, and SQS redelivers them all
        if result.get("batchItemFailures"):
            return "retry"
        if not keep:
            self.queue.pop(index)
        return "ok"

    def context(self) -> LambdaContext:
        return LambdaContext()

    def drain(self, *, limit: int = 500) -> None:
        """Deliver until the queue is empty with faults off; a lease a dead worker holds runs out meanwhile."""
        self.plan.disarm()
        for _ in range(limit):
            if not self.queue:
                return
            if self.deliver(0) == "retry":
                self.clock.now += self.settings.lease_s + 1
                self.queue.append(self.queue.pop(0))
        raise AssertionError(f"the queue did not drain: {len(self.queue)} messages left")

    # -- what the index should hold ------------------------------------------------------------------------
    def objects(self) -> dict[str, bytes]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {o["Key"]: self.s3.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read() for o in listing}

    def reference_rows(self) -> dict[int, set[tuple[str, str, str, str, str]]]:
        """The chunks a clean ingest of the bucket's current objects gives, on exact in-memory shards."""
        stores = [InMemoryVectorStore(shard=i, dimension=DIMENSION) for i in range(len(self.shards.milvus))]
        table = f"reference-{uuid.uuid4().hex[:8]}"
        self.ddb.create_table(**table_definition(table))
        self._tables.append(table)
        service = build_service(
            self.settings, stores, self.embedder, DynamoDbRegistry(self.ddb, table), S3ObjectSource(self.s3)
        )
        for n, key in enumerate(sorted(self.objects())):
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
            event = ObjectEvent(
                kind="created",
                bucket=self.bucket,
                key=key,
                etag=head["ETag"].strip('"'),
                size=head["ContentLength"],
                sequencer=normalise_sequencer(f"{n + 1:x}"),
            )
            service.run(event, owner="reference")
        return {
            i: {(c.chunk_id, c.version, c.tenant, c.external_id, c.text) for c, _ in store._rows.values()}
            for i, store in enumerate(stores)
        }

    def recount(self) -> list[dict[str, Any]]:
        """Every shard's persisted tables next to a recount of the rows it stores."""
        fresh = TermStatsStore(
            FileArtifactStore(self.artifacts_dir.with_name(self.artifacts_dir.name + "-recount")),
            [stats_name("c", i) for i in range(len(self.shards.milvus))],
        )
        rebuild_term_stats(lambda i: self.shards.milvus[i], fresh, per_tenant=self.per_tenant)
        scopes = {""} if not self.per_tenant else {c[2] for rows in self.shards.rows().values() for c in rows}
        return [
            {"shard": i, "scope": scope, "kept": self.stats.load(i, scope), "recount": fresh.load(i, scope)}
            for i in range(len(self.shards.milvus))
            for scope in scopes
        ]


SHIPPED_BM25 = Bm25Settings()


def build_service(
    settings: IngestionSettings,
    stores: Sequence[VectorStore],
    embedder: HashingEmbedder,
    registry: DynamoDbRegistry,
    objects: S3ObjectSource,
    requeue: Requeue | None = None,
    epochs: EpochClock | None = None,
) -> IngestService:
    """The ingest service as ``services.ingest_service`` assembles it, on the given parts."""
    indexer = DocumentIndexer(
        chunker=Chunker(size=settings.chunk_size, overlap=settings.chunk_overlap, token_spans=word_spans),
        embedder=embedder,
        store_for=stores.__getitem__,
        shard_count=len(stores),
        # The shipped BM25: chunks share their document's (or a run of chunks') lexical unit, counted once.
        bm25=Bm25Encoder(k1=SHIPPED_BM25.k1, b=SHIPPED_BM25.b, window=SHIPPED_BM25.window),
        model_id=embedder.model_id,
    )
    return IngestService(
        settings,
        indexer=indexer,
        stores=stores.__getitem__,
        shard_count=len(stores),
        registry=registry,
        objects=objects,
        requeue=requeue,
        clock=epochs,
    )


_HANDLER: Any = None


def _handler() -> Any:
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = ingest_handler()
    return _HANDLER


def iter_rows(rows: dict[int, set[tuple[str, str, str, str, str]]]) -> Iterator[tuple[int, tuple[str, ...]]]:
    for shard, items in rows.items():
        for item in items:
            yield shard, item
