"""The ingest service: one S3 object event in, the index and the registry brought in line with the bucket.

Stages, in order: claim the key in the registry (order safety, leases), read the object in parts, parse,
index through :class:`~shardrag.indexing.DocumentIndexer` (new chunks upserted before stale ones are removed),
record documents, remove what the object no longer produces, and release the key with its final status.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

from shardrag.chunking import Document
from shardrag.config import TENANT_PATTERN, IngestionSettings
from shardrag.indexing import DocumentIndexer
from shardrag.ingestion.errors import IngestError, Reason, Rejected, Retryable
from shardrag.ingestion.events import ObjectEvent, parse_notification
from shardrag.ingestion.parsers import ByteStream, GunzipStream, Parser, ParseReport, ParserRegistry, SourceContext
from shardrag.ingestion.registry import Claim, DocumentState, DynamoDbRegistry
from shardrag.ingestion.source import Blob, ObjectInfo, ObjectMissing, ObjectSource
from shardrag.records import Record
from shardrag.sharding import shard_for
from shardrag.store.base import VectorStore
from shardrag.store.wrapper import StoreWrapper

log = logging.getLogger("shardrag.ingestion")

Action = Literal["indexed", "deleted", "failed", "stale", "duplicate", "unchanged"]


class IngestOutcome(Record):
    """What one event did."""

    source_key: str
    sequencer: str
    action: Action
    reason: str = ""
    documents: int = 0
    chunks: int = 0
    removed_documents: int = 0
    rejected_lines: int = 0


class FreshDocuments:
    """Shard stores for the indexer that skip the stale-version sweep of documents never indexed before.

    :class:`~shardrag.indexing.DocumentIndexer` looks for a document's stale chunks after every upsert. For a
    document the registry has never recorded as indexed there is nothing to find, and on Milvus Lite each sweep
    is a filtered scan of the whole shard: measured on SciFact, the sweeps alone halved bulk-load throughput.
    """

    def __init__(self, stores: Callable[[int], VectorStore]) -> None:
        self._stores = stores
        self._fresh: set[str] = set()
        self._lock = threading.Lock()

    def mark(self, doc_ids: Iterable[str]) -> None:
        with self._lock:
            self._fresh.update(doc_ids)

    def unmark(self, doc_ids: Iterable[str]) -> None:
        with self._lock:
            self._fresh.difference_update(doc_ids)

    def is_fresh(self, doc_id: str) -> bool:
        return doc_id in self._fresh

    def __call__(self, shard: int) -> VectorStore:
        return _SweepSkipping(self._stores(shard), self)


class _SweepSkipping(StoreWrapper):
    """A :class:`VectorStore` that answers a fresh document's stale sweep with 0 and delegates everything else."""

    def __init__(self, inner: VectorStore, fresh: FreshDocuments) -> None:
        super().__init__(inner)
        self._fresh = fresh

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        if keep_version is not None and self._fresh.is_fresh(doc_id):
            return 0
        return self._inner.delete_document(doc_id, keep_version=keep_version)


class IngestService:
    """Processes :class:`ObjectEvent` s; safe to run concurrently and to replay (see the registry)."""

    def __init__(
        self,
        settings: IngestionSettings,
        *,
        indexer: DocumentIndexer,
        stores: Callable[[int], VectorStore],
        shard_count: int,
        registry: DynamoDbRegistry,
        objects: ObjectSource,
        parsers: ParserRegistry | None = None,
        fresh: FreshDocuments | None = None,
    ) -> None:
        """``fresh``: the :class:`FreshDocuments` that ``indexer`` writes through, if any (a speed-up only)."""
        self._settings = settings
        self._fresh = fresh
        self._indexer = indexer
        self._stores = stores
        self._shard_count = shard_count
        self.registry = registry
        self._objects = objects
        self._parsers = parsers or ParserRegistry()

    # -- entry points ----------------------------------------------------------------------------------
    def handle_message(self, body: str, message_id: str) -> list[IngestOutcome]:
        """Every object event in one SQS message body. Raises :class:`Retryable` if any event needs a retry
        (after the others were processed: those are then recognised as duplicates on redelivery)."""
        try:
            events = parse_notification(body)
        except (ValueError, KeyError, TypeError) as exc:
            # Not an S3 notification: retrying cannot make it one.
            log.error("skipping a message that is not an S3 notification: %s", exc)
            return []
        outcomes: list[IngestOutcome] = []
        retry: Retryable | None = None
        for index, event in enumerate(events):
            try:
                outcomes.append(self.run(event, owner=f"{message_id}:{index}"))
            except Retryable as exc:
                retry = exc
        if retry is not None:
            raise retry
        return outcomes

    def run(self, event: ObjectEvent, *, owner: str) -> IngestOutcome:
        """Apply one event. Permanent problems are recorded and returned; transient ones raise :class:`Retryable`."""
        claim, _ = self.registry.claim(event, owner=owner, lease_s=self._settings.lease_s)
        if claim is Claim.STALE or claim is Claim.DUPLICATE:
            return IngestOutcome(source_key=event.source_key, sequencer=event.sequencer, action=claim.value)
        if claim is Claim.BUSY:
            raise Retryable(Reason.BUSY, f"{event.source_key} is being processed by another worker")
        try:
            if event.kind == "removed":
                return self._remove(event, owner)
            return self._index(event, owner)
        except Rejected as exc:
            return self._reject(event, owner, exc)
        except Retryable:
            self.registry.release(event, owner=owner)
            raise
        except Exception as exc:
            # A shard, the model or a client library failed in a way nobody classified: assume it may pass.
            self.registry.release(event, owner=owner)
            raise Retryable(Reason.DEPENDENCY, f"{type(exc).__name__}: {exc}") from exc

    # -- created ---------------------------------------------------------------------------------------
    def _index(self, event: ObjectEvent, owner: str) -> IngestOutcome:
        try:
            info = self._objects.head(event.bucket, event.key)
        except ObjectMissing:
            # Deleted after this event was sent: its delete event (newer) may not have arrived yet.
            return self._remove(event, owner)
        if info.size == 0:
            raise Rejected(Reason.EMPTY, "the object is empty")
        if info.size > self._settings.max_file_bytes:
            raise Rejected(Reason.TOO_LARGE, f"{info.size} bytes (limit {self._settings.max_file_bytes})")
        parser, gzipped = self._parsers.resolve(event.key, info.content_type)
        prior = {d.doc_id: d for d in self.registry.documents_of(event.source_key)}
        current = prior.get(event.key)
        if (
            not parser.multi_document
            and current is not None
            and current.status == "indexed"
            and current.version == info.etag
        ):
            # Same bytes uploaded again (a replay or an identical overwrite): nothing to embed.
            self.registry.put_documents([current.model_copy(update={"sequencer": event.sequencer})])
            self.registry.finish(
                event, owner=owner, status="indexed", doc_count=1, chunk_count=current.chunk_count, etag=info.etag
            )
            return IngestOutcome(
                source_key=event.source_key,
                sequencer=event.sequencer,
                action="unchanged",
                documents=1,
                chunks=current.chunk_count,
            )
        blob = Blob(self._objects, event.bucket, info, self._settings.part_bytes)
        stream: ByteStream = blob
        if gzipped or info.content_encoding.lower() == "gzip":
            stream = GunzipStream(blob, self._settings)
        ctx = SourceContext(
            doc_id=event.key,
            uri=event.uri,
            key=event.key,
            version=info.etag,
            tenant=self._tenant(event.key, info),
            settings=self._settings,
        )
        report = ParseReport()
        written: dict[str, DocumentState] = {}
        for part in self._parts(parser, stream, ctx, report):
            self._index_part(event, parser, part, written)
        # One flush per object, not per part: on Milvus Lite every flush seals a segment, and the background
        # work on many small segments competed with the embedder for the CPU (bulk load at half speed).
        for shard in sorted({shard for s in written.values() for shard in s.held_shards()}):
            self._stores(shard).flush()
        removed = self._drop_documents(event, [d for d in prior.values() if d.doc_id not in written])
        chunks = sum(s.chunk_count for s in written.values())
        self.registry.finish(
            event,
            owner=owner,
            status="indexed",
            doc_count=len(written),
            chunk_count=chunks,
            rejected_lines=report.rejected_lines,
            error="; ".join(report.examples),
            etag=info.etag,
        )
        return IngestOutcome(
            source_key=event.source_key,
            sequencer=event.sequencer,
            action="indexed",
            documents=len(written),
            chunks=chunks,
            removed_documents=removed,
            rejected_lines=report.rejected_lines,
        )

    @staticmethod
    def _parts(parser: Parser, stream: ByteStream, ctx: SourceContext, report: ParseReport) -> Iterator[list[Document]]:
        """The parser's parts; a parser bug on hostile bytes becomes a recorded rejection, not a crash."""
        parts = parser.parse(stream, ctx, report)
        while True:
            try:
                part = next(parts)
            except StopIteration:
                return
            except IngestError:
                raise
            except (
                MemoryError,
                RecursionError,
                ValueError,
                TypeError,
                KeyError,
                IndexError,
                AttributeError,
                AssertionError,
                UnicodeError,
                OverflowError,
                LookupError,
            ) as exc:
                raise Rejected(Reason.PARSER_ERROR, f"{parser.name} parser: {type(exc).__name__}: {exc}") from exc
            yield part

    def _index_part(
        self, event: ObjectEvent, parser: Parser, part: list[Document], written: dict[str, DocumentState]
    ) -> None:
        unchanged: list[DocumentState] = []
        todo: list[Document] = []
        existing = self.registry.get_documents(d.doc_id for d in part)
        if parser.multi_document:
            for doc in part:
                before = existing.get(doc.doc_id)
                if before is not None and before.status == "indexed" and before.version == doc.version:
                    unchanged.append(
                        before.model_copy(
                            update={"sequencer": event.sequencer, "source_key": event.source_key, "uri": event.uri}
                        )
                    )
                else:
                    todo.append(doc)
        else:
            # Slices of one document: number the chunks on from where the previous slice stopped.
            todo = [d.model_copy(update={"first_chunk": self._chunks_so_far(written, d.doc_id)}) for d in part]
        fresh = [d.doc_id for d in todo if not self._was_indexed(existing.get(d.doc_id))]
        if self._fresh is not None:
            self._fresh.mark(fresh)
        # Stale chunks of an earlier version are swept on every shard the registry recorded for it.
        previous = {doc_id: s.held_shards() for doc_id, s in existing.items() if self._was_indexed(s)}
        try:
            results = self._indexer.run(todo, flush=False, previous=previous) if todo else []
        finally:
            if self._fresh is not None:
                self._fresh.unmark(fresh)
        states = list(unchanged)
        for doc, result in zip(todo, results, strict=True):
            before_chunks = self._chunks_so_far(written, doc.doc_id) if not parser.multi_document else 0
            earlier = written.get(doc.doc_id) if not parser.multi_document else None
            shards = list(dict.fromkeys([*(earlier.shards if earlier else []), *result.shards]))
            states.append(
                DocumentState(
                    doc_id=doc.doc_id,
                    source_key=event.source_key,
                    uri=event.uri,
                    version=doc.version,
                    sequencer=event.sequencer,
                    shard=earlier.shard if earlier and earlier.shards else result.shard,
                    shards=shards,
                    chunk_count=before_chunks + result.chunks,
                    status="indexed",
                    tenant=doc.tenant,
                )
            )
        for state in states:
            written[state.doc_id] = state
        self.registry.put_documents(states)

    @staticmethod
    def _was_indexed(state: DocumentState | None) -> bool:
        # Deleted and failed documents had their chunks removed when they got that status.
        return state is not None and state.status == "indexed"

    @staticmethod
    def _chunks_so_far(written: Mapping[str, DocumentState], doc_id: str) -> int:
        state = written.get(doc_id)
        return state.chunk_count if state is not None else 0

    def _tenant(self, key: str, info: ObjectInfo) -> str:
        """The document's tenant: one for all, the key's first segment, or the object's user metadata. With
        tenants on, an object that names no valid tenant is rejected rather than filed under a default one."""
        source = self._settings.tenant_source
        if source == "default":
            return self._settings.default_tenant
        if source == "key_prefix":
            tenant = key.split("/", 1)[0] if "/" in key else ""
        else:
            tenant = info.metadata.get(self._settings.tenant_metadata_key.lower(), "")
        if not re.fullmatch(TENANT_PATTERN, tenant):
            where = "key prefix" if source == "key_prefix" else f"x-amz-meta-{self._settings.tenant_metadata_key}"
            raise Rejected(Reason.NO_TENANT, f"no valid tenant in the object's {where}: {tenant[:64]!r}")
        return tenant

    # -- removed, rejected -----------------------------------------------------------------------------
    def _remove(self, event: ObjectEvent, owner: str) -> IngestOutcome:
        removed = self._drop_documents(event, self.registry.documents_of(event.source_key))
        self.registry.finish(event, owner=owner, status="deleted", etag="")
        return IngestOutcome(
            source_key=event.source_key, sequencer=event.sequencer, action="deleted", removed_documents=removed
        )

    def _reject(self, event: ObjectEvent, owner: str, exc: Rejected) -> IngestOutcome:
        log.warning("rejected %s: %s", event.uri, exc)
        # The bucket no longer holds what this key used to produce: the index must not keep answering with it.
        removed = self._drop_documents(event, self.registry.documents_of(event.source_key))
        self.registry.put_documents(
            [
                DocumentState(
                    doc_id=event.key,
                    source_key=event.source_key,
                    uri=event.uri,
                    version=event.etag,
                    sequencer=event.sequencer,
                    status="failed",
                    reason=exc.reason.value,
                )
            ]
        )
        self.registry.finish(event, owner=owner, status="failed", reason=exc.reason.value, error=exc.message)
        return IngestOutcome(
            source_key=event.source_key,
            sequencer=event.sequencer,
            action="failed",
            reason=exc.reason.value,
            removed_documents=removed,
        )

    def _drop_documents(self, event: ObjectEvent, documents: list[DocumentState]) -> int:
        """Remove the chunks of ``documents`` (those this object produced) and leave tombstones."""
        live = [d for d in documents if d.status == "indexed" and d.source_key == event.source_key]
        touched: set[int] = set()
        for doc in live:
            # Every shard the registry recorded (replicas included); the hash shard for items that predate it.
            shards = doc.held_shards() if doc.shards else [shard_for(doc.doc_id, self._shard_count)]
            for shard in shards:
                self._stores(shard).delete_document(doc.doc_id)
                touched.add(shard)
        for shard in sorted(touched):
            self._stores(shard).flush()
        tombstones = [
            d.model_copy(update={"status": "deleted", "sequencer": event.sequencer, "chunk_count": 0})
            for d in documents
            if d.source_key == event.source_key and d.status != "deleted"
        ]
        self.registry.put_documents(tombstones)
        return len(live)


def build_ingest_service(
    settings: IngestionSettings,
    *,
    indexer: DocumentIndexer,
    stores: Callable[[int], VectorStore],
    shard_count: int,
    s3_client: Any,
    dynamodb_client: Any,
    table_name: str,
    fresh: FreshDocuments | None = None,
) -> IngestService:
    """An :class:`IngestService` on boto3 clients (the handler's cached factory and the tests use this)."""
    from shardrag.ingestion.source import S3ObjectSource

    return IngestService(
        settings,
        indexer=indexer,
        stores=stores,
        shard_count=shard_count,
        registry=DynamoDbRegistry(dynamodb_client, table_name),
        objects=S3ObjectSource(s3_client),
        fresh=fresh,
    )
