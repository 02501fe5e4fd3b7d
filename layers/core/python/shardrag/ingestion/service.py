"""The ingest service: one S3 object event in, the index and the registry brought in line with the bucket.

Stages, in order: claim the key in the registry (order safety, leases), read the object in parts, parse,
index through :class:`~shardrag.indexing.DocumentIndexer` under one epoch (``shardrag.visibility``: new rows unseen
until the commit, replaced rows retired at it and deleted ``retire_grace_s`` later), record documents, remove what
the object no longer produces, and release the key with its final status.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

from shardrag.bm25 import counts_unit, stored_length
from shardrag.chunking import Chunker, Document
from shardrag.config import TENANT_PATTERN, IngestionSettings
from shardrag.embedding.stop import stoppable
from shardrag.identity import object_doc_id
from shardrag.indexing import DocumentIndexer, IndexResult, MeanLength, Plan, Reusable
from shardrag.ingestion.errors import IngestError, Reason, Rejected, Retryable
from shardrag.ingestion.events import ObjectEvent, notification, parse_notification
from shardrag.ingestion.parsers import ByteStream, GunzipStream, Parser, ParseReport, ParserRegistry, SourceContext
from shardrag.ingestion.registry import Claim, DocumentState, DynamoDbRegistry, LeaseLost
from shardrag.ingestion.source import Blob, ObjectInfo, ObjectMissing, ObjectSource
from shardrag.records import Record, Snapshot, SparseVector
from shardrag.sharding import shard_for
from shardrag.store.base import VectorStore
from shardrag.visibility import EpochClock, MemoryEpochClock

log = logging.getLogger("shardrag.ingestion")

#: How often a run that writes an object checks that the bucket still holds its version: at most every
#: ``VERSION_CHECK_S``, at least every ``VERSION_CHECK_MIN_S``, and otherwise as often as keeps the checks (one
#: blocking S3 HEAD each: 0.9 ms p50 on the local emulation; a network round trip deployed) under
#: ``VERSION_CHECK_SHARE`` of the run's time.
VERSION_CHECK_S = 1.0
VERSION_CHECK_MIN_S = 0.25
VERSION_CHECK_SHARE = 0.02

Action = Literal["indexed", "deleted", "failed", "stale", "duplicate", "unchanged", "superseded", "continued", "swept"]


class Requeue(Protocol):
    """Sends an event back to the ingest queue, visible after ``delay_s`` seconds."""

    def __call__(self, event: ObjectEvent, *, delay_s: int = 0) -> None: ...


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
    #: Chunks this run embedded with the model, and chunks that took an earlier version's vector.
    embedded: int = 0
    reused: int = 0
    #: Chunks whose rows were already stored exactly as this run would write them (neither embedded nor written).
    kept: int = 0


class _Lease:
    """The event being processed and the owner token that holds its key: every registry write is fenced by it.
    ``time_left``: the invocation's remaining seconds, when the rest of an object may be continued elsewhere."""

    def __init__(self, event: ObjectEvent, owner: str, time_left: Callable[[], float] | None = None) -> None:
        self.event = event
        self.owner = owner
        self.time_left = time_left
        self.slowest_part_s = 0.0
        self.parts = 0
        #: When the run last checked that the bucket still holds its version (``monotonic``; 0: never).
        self.checked_at = time.monotonic()
        #: How long the last check took; before the first, what makes the first interval ``VERSION_CHECK_S``.
        self.check_s = VERSION_CHECK_S * VERSION_CHECK_SHARE

    def room_for_another_part(self, margin_s: float) -> bool:
        if self.time_left is None or self.parts == 0:
            return True  # every invocation makes progress: at least one part
        return self.time_left() >= 2 * self.slowest_part_s + margin_s

    @property
    def fence(self) -> tuple[ObjectEvent, str]:
        return self.event, self.owner


class _Written:
    """Rows this run wrote (per shard) and the versions of the documents it wrote them for, so that a run which
    loses its lease knows whether it may have left rows behind that the new owner does not know of."""

    def __init__(self) -> None:
        self.rows: dict[int, set[str]] = {}
        self.versions: dict[str, str] = {}
        self.embedded = 0
        self.reused = 0
        self.kept = 0

    def add(self, doc_id: str, version: str, result: IndexResult) -> None:
        self.embedded += result.embedded
        self.reused += result.reused
        self.kept += result.kept
        if result.written:
            self.versions[doc_id] = version
        for shard, ids in result.written.items():
            self.rows.setdefault(shard, set()).update(ids)


class _Replaced(Exception):
    """The bucket no longer holds the version being indexed: a newer event for the key will index what it holds."""


class _Continue(Exception):
    """This invocation's time is nearly up: the rest of the object goes to a fresh invocation."""


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
        requeue: Requeue | None = None,
        on_change: Callable[[], object] | None = None,
        clock: EpochClock | None = None,
    ) -> None:
        """``clock``: the epochs queries read their snapshots from (``shardrag.visibility``; default: one in this
        process's memory). ``requeue``: sends an event back to the ingest queue; with it, a large object whose
        parts would not fit in the invocation's remaining time is continued by a fresh invocation, and the rows an
        overwrite retired are deleted by a message delayed by ``retire_grace_s`` (without it: at once).
        ``on_change``: called before an event may change the index and again once it is done (or gave up): the
        index version that answer caches key on (``shardrag.caching``)."""
        self._settings = settings
        self._clock: EpochClock = clock if clock is not None else MemoryEpochClock()
        self._on_change = on_change
        self._requeue = requeue
        self._indexer = indexer
        self._stores = stores
        self._shard_count = shard_count
        self.registry = registry
        self._objects = objects
        self._parsers = parsers or ParserRegistry()

    # -- entry points ----------------------------------------------------------------------------------
    def handle_message(
        self, body: str, message_id: str, *, time_left: Callable[[], float] | None = None
    ) -> list[IngestOutcome]:
        """Every object event in one SQS message body. Raises :class:`Retryable` if any event needs a retry
        (after the others were processed: those are then recognised as duplicates on redelivery).
        ``time_left``: seconds this invocation has left (the Lambda context's), for continuations."""
        try:
            events = parse_notification(body)
        except (ValueError, KeyError, TypeError) as exc:
            # Not an S3 notification: retrying cannot make it one.
            log.error("skipping a message that is not an S3 notification: %s", exc)
            return []
        outcomes: list[IngestOutcome] = []
        retry: Retryable | None = None
        # One token per delivery: SQS keeps a message's id across redeliveries, and a redelivery that arrives
        # while the first delivery still works (a visibility timeout shorter than the work) must not pass as
        # the lease's owner.
        attempt = uuid.uuid4().hex[:12]
        for index, event in enumerate(events):
            try:
                outcomes.append(self.run(event, owner=f"{message_id}:{index}:{attempt}", time_left=time_left))
            except Retryable as exc:
                retry = exc
        if retry is not None:
            raise retry
        return outcomes

    def run(self, event: ObjectEvent, *, owner: str, time_left: Callable[[], float] | None = None) -> IngestOutcome:
        """Apply one event. Permanent problems are recorded and returned; transient ones raise :class:`Retryable`."""
        if event.retired:
            return self._sweep_retired(event)
        claim, _ = self.registry.claim(event, owner=owner, lease_s=self._settings.lease_s)
        if claim is Claim.STALE or claim is Claim.DUPLICATE:
            return IngestOutcome(source_key=event.source_key, sequencer=event.sequencer, action=claim.value)
        if claim is Claim.BUSY:
            raise Retryable(Reason.BUSY, f"{event.source_key} is being processed by another worker")
        lease = _Lease(event, owner, time_left if self._requeue is not None else None)
        written = _Written()
        try:
            try:
                # The index version advances before the first write and again before the outcome is recorded
                # (``_finish``): an answer computed while the index changes is keyed by a version that no query
                # reads once the change is complete.
                self._changed()
                if event.kind == "removed":
                    return self._remove(lease)
                return self._index(lease, written)
            except Rejected as exc:
                return self._reject(lease, exc)
        except LeaseLost:
            outcome = self._superseded(lease, written)
            self._changed(best_effort=True)
            return outcome
        except _Continue:
            self._changed(best_effort=True)
            return self._continue(lease)
        except _Replaced:
            # Rows written so far stay: the newer run keeps what it shares with them and sweeps the rest.
            self._changed(best_effort=True)
            self.registry.release(event, owner=owner)
            log.info("%s was replaced in the bucket while it was indexed; the newer event takes over", event.uri)
            return IngestOutcome(
                source_key=event.source_key, sequencer=event.sequencer, action="superseded", reason="replaced"
            )
        except Retryable:
            self._changed(best_effort=True)
            self.registry.release(event, owner=owner)
            raise
        except Exception as exc:
            # A shard, the model or a client library failed in a way nobody classified: assume it may pass.
            self._changed(best_effort=True)
            self.registry.release(event, owner=owner)
            raise Retryable(Reason.DEPENDENCY, f"{type(exc).__name__}: {exc}") from exc

    def _changed(self, *, best_effort: bool = False) -> None:
        """Advance the index version. On a path that already failed, a failure to advance is logged, not
        raised: the retry advances it before it writes again."""
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            if not best_effort:
                raise
            log.warning("could not advance the index version", exc_info=True)

    def _superseded(self, lease: _Lease, written: _Written) -> IngestOutcome:
        """The key's lease passed to another worker mid-run, and this run stops writing. Rows are ids of their
        content, so what it wrote may be rows the new owner keeps: it never deletes them. Whatever the new version
        does not have is swept by a repair of the key (a reconcile event at the sequencer the registry holds, the
        same sweep): here and now if the new owner has finished, else through the queue, where the repair waits
        (``busy``) until the owner is done (whose own sweep may have read the store before this run's last write).
        """
        event = lease.event
        log.warning("lease on %s lost; this run stops", event.source_key)
        outcome = IngestOutcome(source_key=event.source_key, sequencer=event.sequencer, action="superseded")
        if not written.rows:
            return outcome
        source = self.registry.get_source(event.source_key)
        if source is None:
            return outcome  # nothing recorded for the key: a repair has nothing to act on
        current = self.registry.get_documents(written.versions)
        if all(
            (state := current.get(doc_id)) is not None and state.status == "indexed" and state.version == version
            for doc_id, version in written.versions.items()
        ):
            return outcome  # the same version was indexed: this run's rows are its own rows
        repair = ObjectEvent(
            kind="created", bucket=event.bucket, key=event.key, sequencer=source.sequencer, reconcile=True
        )
        if source.status != "processing":
            try:
                done = self.run(repair, owner=f"{lease.owner}:repair")
                log.info("repaired %s after a lost lease: %s", event.source_key, done.action)
                return outcome
            except Retryable:
                pass
        if self._requeue is None:
            log.error("%s may keep rows of a superseded run until it is reconciled", event.source_key)
        else:
            self._requeue(repair)
        return outcome

    def _continue(self, lease: _Lease) -> IngestOutcome:
        """Give the key back (progress is recorded) and queue the same event for a fresh invocation, which
        claims the released key and resumes after the parts already written."""
        event = lease.event
        self.registry.release(event, owner=lease.owner)
        assert self._requeue is not None
        try:
            self._requeue(event.model_copy(update={"continuation": True}))
        except Exception as exc:
            # The original message is then redelivered, and resumes the same way.
            raise Retryable(Reason.DEPENDENCY, f"could not queue the continuation: {type(exc).__name__}") from exc
        log.info("continuing %s in a fresh invocation", event.uri)
        return IngestOutcome(source_key=event.source_key, sequencer=event.sequencer, action="continued")

    def _finish(self, lease: _Lease, **fields: Any) -> None:
        self._changed()
        if not self.registry.finish(lease.event, owner=lease.owner, **fields):
            raise LeaseLost(f"{lease.event.source_key}: lease lost before finishing")

    # -- created ---------------------------------------------------------------------------------------
    def _index(self, lease: _Lease, written: _Written) -> IngestOutcome:
        event = lease.event
        try:
            info = self._objects.head(event.bucket, event.key)
        except ObjectMissing:
            # Deleted after this event was sent: its delete event (newer) may not have arrived yet.
            return self._remove(lease)
        if info.size == 0:
            raise Rejected(Reason.EMPTY, "the object is empty")
        if info.size > self._settings.max_file_bytes:
            raise Rejected(Reason.TOO_LARGE, f"{info.size} bytes (limit {self._settings.max_file_bytes})")
        parser, gzipped = self._parsers.resolve(event.key, info.content_type)
        tenant = self._tenant(event.key, info)
        prior = {d.doc_id: d for d in self.registry.documents_of(event.source_key)}
        blob = Blob(self._objects, event.bucket, info, self._settings.part_bytes)
        stream: ByteStream = blob
        if gzipped or info.content_encoding.lower() == "gzip":
            stream = GunzipStream(blob, self._settings)
        ctx = SourceContext(
            doc_id=object_doc_id(tenant, event.key),
            uri=event.uri,
            key=event.key,
            version=info.etag,
            tenant=tenant,
            settings=self._settings,
        )
        report = ParseReport()
        if parser.multi_document:
            states = self._index_lines(lease, parser, stream, ctx, report, written)
        else:
            # Read consistently, not from the source index (a GSI lags its table): a missed record would skip
            # the sweep of the previous version.
            current = self.registry.get_documents([ctx.doc_id]).get(ctx.doc_id)
            state = self._index_object(lease, parser, stream, ctx, report, current, written, info.size)
            if state is None:
                assert current is not None
                return self._unchanged(lease, current)
            states = {state.doc_id: state}
        removed = self._drop_documents(lease, [d for d in prior.values() if d.doc_id not in states])
        chunks = sum(s.chunk_count for s in states.values())
        self._finish(
            lease,
            status="indexed",
            doc_count=len(states),
            chunk_count=chunks,
            rejected_lines=report.rejected_lines,
            error="; ".join(report.examples),
            etag=info.etag,
        )
        return IngestOutcome(
            source_key=event.source_key,
            sequencer=event.sequencer,
            action="indexed",
            documents=len(states),
            chunks=chunks,
            removed_documents=removed,
            rejected_lines=report.rejected_lines,
            embedded=written.embedded,
            reused=written.reused,
            kept=written.kept,
        )

    def _unchanged(self, lease: _Lease, current: DocumentState) -> IngestOutcome:
        """Same bytes uploaded again (a replay or an identical overwrite) and completely indexed: nothing to do."""
        event = lease.event
        self.registry.put_documents([current.model_copy(update={"sequencer": event.sequencer})], lease=lease.fence)
        self._finish(lease, status="indexed", doc_count=1, chunk_count=current.chunk_count, etag=current.version)
        return IngestOutcome(
            source_key=event.source_key,
            sequencer=event.sequencer,
            action="unchanged",
            documents=1,
            chunks=current.chunk_count,
        )

    def _plan(self, parser: Parser) -> str:
        """What decides how an object is cut into parts and chunks: a resumed run must cut it the same way."""
        s = self._settings
        return f"{parser.name}:{s.part_bytes}:{s.chunk_size}:{s.chunk_overlap}:{s.max_document_chars}:{Chunker.VERSION}"

    def _index_object(
        self,
        lease: _Lease,
        parser: Parser,
        stream: ByteStream,
        ctx: SourceContext,
        report: ParseReport,
        current: DocumentState | None,
        written: _Written,
        size: int,
    ) -> DocumentState | None:
        """One document read in parts, as one epoch (``shardrag.visibility``): recorded ``writing`` (with its
        epoch) before its first chunk, each part's progress recorded after it; the rows it writes carry the epoch,
        which keeps them from every query until the commit; after the last part, the earlier version's rows that
        this one does not keep are stamped retired at the epoch, the epoch is committed (from then on queries see
        the new version and not the old, in one step) and the retired rows are deleted; only then ``indexed``.
        Rows already stored exactly as this version would write them, and seen by queries, are kept, not
        rewritten: an overwrite with one paragraph edited writes that paragraph's chunks, a retry or a
        continuation of the same version writes only what the interrupted attempt had not. ``None``: already
        indexed at this version.

        A run whose document is still ``writing`` under an open epoch (a retry, a continuation, a newer version
        that took over the key) adopts that epoch: whatever the earlier attempt wrote stays unseen until this run
        commits, and what this run does not keep of it is deleted before. While it only adds rows, the run lets a
        newer version of the object take the key (``preemptible``), and it stops by itself once the bucket no
        longer holds its version: a stale version is not embedded to the end."""
        event, version = lease.event, ctx.version
        if current is not None and current.status == "indexed" and current.version == version and not event.reconcile:
            return None
        plan_id = self._plan(parser)
        live = current is not None and current.live
        before = current.held_shards() if current is not None and live else []
        shards = _union(before, self._indexer.may_hold(ctx.doc_id))
        snapshot = self._clock.snapshot()
        adopt = current is not None and current.status == "writing" and current.epoch in snapshot.open
        epoch = current.epoch if adopt and current is not None else self._clock.begin()
        # The rows stored now, by id, with their epochs. Read once: rows that land after this (a superseded
        # run's) are left to the settling after the last part, which reads the store again.
        found = self._row_epochs(ctx.doc_id, shards) if live else {}
        # Kept as they are: rows queries see now (the committed version), and this epoch's own.
        stored = {
            cid: where for cid, (first, last, where) in found.items() if first == epoch or snapshot.sees(first, last)
        }
        resume = adopt and current is not None and current.version == version
        resume = resume and current is not None and current.plan == plan_id and bool(current.lexical_mean)
        if resume and current is not None:
            mean = MeanLength(float(current.lexical_mean))
        else:
            # Weighed against the corpus without any row of this document: what a fresh ingest would see.
            mean = MeanLength(replacing=self._stored_lengths({cid: where for cid, (_, _, where) in found.items()}))
        state = DocumentState(
            doc_id=ctx.doc_id,
            external_id=ctx.key,
            source_key=event.source_key,
            uri=event.uri,
            version=version,
            sequencer=event.sequencer,
            status="writing",
            tenant=ctx.tenant,
            plan=plan_id,
            shards=shards,
            model=self._indexer.model_id,
            lexical_mean=repr(mean.value) if mean.value else "",
            parts_done=current.parts_done if resume and current is not None else 0,
            chunk_count=current.chunk_count if resume and current is not None else 0,
            epoch=epoch,
        )
        # Write-ahead: from here on the registry says where this document's chunks may be, and under which epoch.
        self.registry.put_documents([state], lease=lease.fence)
        reuse = self._reusable(current) if found else None
        parts = self._planned_parts(parser, stream, ctx, report, mean, epoch)
        self.registry.preemptible(event, owner=lease.owner, allowed=True)
        landed: list[int] = list(state.shards) if state.parts_done else []
        keep: list[str] = []
        for index, part in enumerate(parts):
            if index < state.parts_done:
                # Written by an earlier attempt at this version (same cut, same mean, same epoch: the same rows).
                keep.extend(chunk.chunk_id for plan in part for chunk in plan.chunks)
                continue
            if not lease.room_for_another_part(self._settings.continue_margin_s):
                raise _Continue
            started = time.monotonic()
            self.registry.renew(event, owner=lease.owner, lease_s=self._settings.lease_s)
            for plan in part:
                for batch in plan.batches(self._settings.write_batch_chunks):
                    self._check_still_current(lease, ctx)
                    # ... and between the texts it embeds: a batch takes seconds to embed.
                    with stoppable(lambda: self._check_still_current(lease, ctx)):
                        [result] = self._indexer.write(
                            batch, flush=False, sweep=False, reuse=reuse, stored={ctx.doc_id: stored}
                        )
                    written.add(ctx.doc_id, version, result)
                    keep.extend(result.ids)
                    landed = _union(landed, result.shards)
            update: dict[str, Any] = {"parts_done": index + 1, "chunk_count": len(keep)}
            update["lexical_mean"] = repr(mean.value) if mean.value else ""
            update["shards"] = _union(state.shards, landed)
            if update != {k: getattr(state, k) for k in update}:
                state = state.model_copy(update=update)
                self.registry.put_documents([state], lease=lease.fence)
            lease.parts += 1
            lease.slowest_part_s = max(lease.slowest_part_s, time.monotonic() - started)
        self.registry.preemptible(event, owner=lease.owner, allowed=False)
        self._commit(event, ctx.doc_id, set(keep), state.shards, epoch, fresh=not live)
        # One flush per object, not per part: on Milvus Lite every flush seals a segment, and the background
        # work on many small segments competed with the embedder for the CPU (bulk load at half speed).
        for shard in sorted(state.shards):
            self._stores(shard).flush()
        final = state.model_copy(
            update={
                "status": "indexed",
                "shards": landed or state.shards[:1],
                "shard": (landed or state.shards)[0],
                "parts_done": 0,  # progress means something only while writing
                "plan": "",
                "epoch": 0,
            }
        )
        self.registry.put_documents([final], lease=lease.fence)
        return final

    def _commit(
        self, event: ObjectEvent, doc_id: str, keep: set[str], shards: Iterable[int], epoch: int, *, fresh: bool
    ) -> None:
        """Make ``epoch`` the version queries see of ``doc_id`` in one step (:meth:`_settle`, then the commit),
        then have what it replaced deleted. A document the registry never recorded as live has no rows but this
        run's (the write-ahead record precedes them), so the read, a filtered scan on Milvus Lite, is skipped."""
        gone = {} if fresh else self._settle(doc_id, keep, shards, epoch, self._clock.snapshot())
        self._clock.commit(epoch)
        self._delete_retired(event, epoch, gone)

    def _delete_retired(self, event: ObjectEvent, epoch: int, gone: Mapping[int, Sequence[str]]) -> None:
        """Delete the rows ``epoch`` retired once no query can still read a snapshot from before its commit:
        through a message delayed by ``retire_grace_s`` where there is a queue, else (or if the message cannot be
        sent) now."""
        if not any(gone.values()):
            return
        grace = self._settings.retire_grace_s
        if self._requeue is not None and grace > 0:
            sweep = ObjectEvent(
                kind="created",
                bucket=event.bucket,
                key=event.key,
                retired=epoch,
                committed_at_ms=self.registry.now_ms(),
            )
            try:
                self._requeue(sweep, delay_s=grace)
                return
            except Exception:
                log.warning(
                    "could not queue the deletion of epoch %d's retired rows; deleting now", epoch, exc_info=True
                )
        for shard, ids in sorted(gone.items()):
            if ids:
                self._stores(shard).delete_chunks(ids)

    def _sweep_retired(self, event: ObjectEvent) -> IngestOutcome:
        """Delete every row stamped retired at ``event.retired`` (committed: nobody sees them, and no run keeps or
        revives a row its snapshot does not see), once ``retire_grace_s`` has passed since the commit. Needs no
        lease: a concurrent run on the key never keeps these rows."""
        due_ms = event.committed_at_ms + self._settings.retire_grace_s * 1000
        if self.registry.now_ms() < due_ms:
            raise Retryable(
                Reason.BUSY, f"epoch {event.retired}'s retired rows are due in {due_ms - self.registry.now_ms()} ms"
            )
        removed = 0
        for shard in range(self._shard_count):
            store = self._stores(shard)
            ids = store.retired_at(event.retired)
            if ids:
                removed += store.delete_chunks(ids)
                store.flush()
        return IngestOutcome(source_key=event.source_key, sequencer=event.sequencer, action="swept", chunks=removed)

    def _settle(
        self, doc_id: str, keep: set[str], shards: Iterable[int], epoch: int, now: Snapshot
    ) -> dict[int, list[str]]:
        """Ready ``doc_id``'s rows for the commit of ``epoch``, with the store read again now, after this run's
        writes; returns, per shard, the rows to delete once the epoch is committed:

        * a kept row that an earlier attempt stamped retired is made live again (it stays seen throughout);
        * a row queries see now and this version does not keep is stamped retired at ``epoch`` (still seen);
        * a row nobody sees (an interrupted attempt's, this epoch's own that the version no longer has, one an
          earlier commit retired) is deleted now: it would be seen after the commit."""
        revive: dict[int, list[str]] = {}
        retire: dict[int, list[str]] = {}
        gone: dict[int, list[str]] = {}
        junk: dict[int, list[str]] = {}
        for cid, (first, last, where) in self._row_epochs(doc_id, shards).items():
            seen = now.sees(first, last)
            targets: list[dict[int, list[str]]] = []
            if cid in keep:
                if first != epoch and last and seen:
                    targets = [revive]
                elif first != epoch and not seen:
                    # Seen when this run began, retired by someone else since: never deleted here.
                    log.warning("%s: kept row %s is no longer seen (epochs %d-%d)", doc_id, cid, first, last)
            elif first != epoch and seen:
                targets = [gone] if last == epoch else [retire, gone]
            else:
                targets = [junk]
            for target in targets:
                for shard in where:
                    target.setdefault(shard, []).append(cid)
        for shard, ids in sorted(revive.items()):
            self._stores(shard).retire(ids, 0)
        for shard, ids in sorted(junk.items()):
            self._stores(shard).delete_chunks(ids)
        for shard, ids in sorted(retire.items()):
            self._stores(shard).retire(ids, epoch)
        return gone

    def _planned_parts(
        self,
        parser: Parser,
        stream: ByteStream,
        ctx: SourceContext,
        report: ParseReport,
        mean: MeanLength,
        epoch: int,
    ) -> Iterator[list[Plan]]:
        """The object's parts, each cut into chunks with their row ids, numbered across parts, written at
        ``epoch``."""
        count = 0
        for part in self._parts(parser, stream, ctx, report):
            plans = []
            for piece in part:
                plan = self._indexer.plan([piece.model_copy(update={"first_chunk": count})], mean=mean, epoch=epoch)
                count += len(plan.chunks)
                plans.append(plan)
            yield plans

    def _check_still_current(self, lease: _Lease, ctx: SourceContext) -> None:
        """Stop (:class:`_Replaced`) if the bucket no longer holds this version: its newer event is on its way,
        and every chunk embedded for this one from here on would be wasted. As often as its cost allows
        (``VERSION_CHECK_SHARE``), between ``VERSION_CHECK_MIN_S`` and ``VERSION_CHECK_S``."""
        now = time.monotonic()
        every = min(VERSION_CHECK_S, max(VERSION_CHECK_MIN_S, lease.check_s / VERSION_CHECK_SHARE))
        if now - lease.checked_at < every:
            return
        lease.checked_at = now
        try:
            info = self._objects.head(lease.event.bucket, lease.event.key)
        except ObjectMissing:
            raise _Replaced from None
        finally:
            lease.check_s = time.monotonic() - now
        if info.etag != ctx.version:
            raise _Replaced

    def _stored_lengths(self, stored: Mapping[str, Sequence[int]]) -> tuple[int, int]:
        """The BM25 length and the number of lexical units that the rows in ``stored`` count (each copy counted,
        as the statistics do)."""
        by_shard: dict[int, list[str]] = {}
        for cid, shards in stored.items():
            for shard in shards:
                by_shard.setdefault(shard, []).append(cid)
        return _lengths(
            terms.sparse for shard, ids in by_shard.items() for terms in self._stores(shard).stored_terms(ids).values()
        )

    def _row_epochs(self, doc_id: str, shards: Iterable[int]) -> dict[str, tuple[int, int, list[int]]]:
        """The ids of ``doc_id``'s stored rows, with the epochs that wrote and retired them (a row's copies on
        several shards are written and stamped together) and the shards that hold each."""
        rows: dict[str, tuple[int, int, list[int]]] = {}
        for shard in shards:
            for cid, (first, last) in self._stores(shard).row_epochs(doc_id).items():
                rows.setdefault(cid, (first, last, []))[2].append(shard)
        return rows

    def _reusable(self, before: DocumentState | None) -> dict[str, Reusable] | None:
        """Where a document's earlier rows are, for vectors its new version may reuse: only if the registry says
        the same model wrote them (and each row's id says so too: ``row_identity.by_model``)."""
        model = self._indexer.model_id
        if not model or before is None or not before.live or before.model != model:
            return None
        return {before.doc_id: Reusable(shards=before.held_shards())}

    def _index_lines(
        self,
        lease: _Lease,
        parser: Parser,
        stream: ByteStream,
        ctx: SourceContext,
        report: ParseReport,
        written: _Written,
    ) -> dict[str, DocumentState]:
        """A bulk file: each batch of lines is a set of whole documents, each with its own version (its content
        hash), so an unchanged line is not embedded again."""
        states: dict[str, DocumentState] = {}
        touched: set[int] = set()
        for part in self._parts(parser, stream, ctx, report):
            if not lease.room_for_another_part(self._settings.continue_margin_s):
                # The lines written so far are indexed at their versions: the continuation skips them.
                raise _Continue
            started = time.monotonic()
            self.registry.renew(lease.event, owner=lease.owner, lease_s=self._settings.lease_s)
            for state in self._index_batch(lease, part, written):
                states[state.doc_id] = state
                touched.update(state.held_shards())
            if any(s.status == "indexed" and s.sequencer == lease.event.sequencer for s in states.values()):
                lease.parts += 1
                lease.slowest_part_s = max(lease.slowest_part_s, time.monotonic() - started)
        for shard in sorted(touched):
            self._stores(shard).flush()
        return states

    def _index_batch(self, lease: _Lease, part: list[Document], written: _Written) -> list[DocumentState]:
        event = lease.event
        existing = self.registry.get_documents(d.doc_id for d in part)
        unchanged: list[DocumentState] = []
        todo: list[Document] = []
        for doc in part:
            before = existing.get(doc.doc_id)
            same = before is not None and before.status == "indexed" and before.version == doc.version
            if same and before is not None and not event.reconcile:
                unchanged.append(before.model_copy(update={"sequencer": event.sequencer, "uri": event.uri}))
            else:
                todo.append(doc)

        def state(doc: Document, **fields: Any) -> DocumentState:
            return DocumentState(
                doc_id=doc.doc_id,
                external_id=doc.external_id,
                source_key=event.source_key,
                uri=event.uri,
                version=doc.version,
                sequencer=event.sequencer,
                tenant=doc.tenant,
                model=self._indexer.model_id,
                **fields,
            )

        previous = {doc_id: s.held_shards() for doc_id, s in existing.items() if s.live}
        if not todo:
            self.registry.put_documents(unchanged, lease=lease.fence)
            return unchanged
        # One epoch for the batch (``shardrag.visibility``): queries see each of its documents before or after,
        # never a mix. A retry of the same batch adopts the epoch its interrupted attempt left open.
        snapshot = self._clock.snapshot()
        left = {existing[d.doc_id].epoch if d.doc_id in existing else 0 for d in todo}
        adopt = len(left) == 1 and next(iter(left)) in snapshot.open
        adopt = adopt and all(existing[d.doc_id].status == "writing" for d in todo)
        epoch = next(iter(left)) if adopt else self._clock.begin()
        shards = {d.doc_id: _union(previous.get(d.doc_id, []), self._indexer.may_hold(d.doc_id)) for d in todo}
        # Write-ahead, as for objects: no chunk exists before a record of where it may be, and under which epoch.
        self.registry.put_documents(
            [state(d, status="writing", shards=shards[d.doc_id], epoch=epoch) for d in todo], lease=lease.fence
        )
        # Kept as they are: rows queries see now, and this epoch's own (a document never live has none).
        stored = {
            doc_id: {
                cid: where
                for cid, (first, last, where) in self._row_epochs(doc_id, shards[doc_id]).items()
                if first == epoch or snapshot.sees(first, last)
            }
            for doc_id in previous
            if doc_id in shards
        }
        reuse = {
            doc_id: source
            for doc_id, before in existing.items()
            if (found := self._reusable(before)) is not None
            for source in found.values()
        }
        results = self._indexer.run(todo, flush=False, sweep=False, reuse=reuse, stored=stored, epoch=epoch)
        now = self._clock.snapshot()
        gone: dict[int, list[str]] = {}
        for doc, result in zip(todo, results, strict=True):
            if doc.doc_id in previous:
                where = _union(shards[doc.doc_id], result.shards)
                for shard, ids in self._settle(doc.doc_id, set(result.ids), where, epoch, now).items():
                    gone.setdefault(shard, []).extend(ids)
        self._clock.commit(epoch)
        self._delete_retired(event, epoch, gone)
        states = list(unchanged)
        for doc, result in zip(todo, results, strict=True):
            written.add(doc.doc_id, doc.version, result)
            states.append(
                state(doc, status="indexed", shard=result.shard, shards=result.shards, chunk_count=result.chunks)
            )
        self.registry.put_documents(states, lease=lease.fence)
        return states

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
    def _remove(self, lease: _Lease) -> IngestOutcome:
        removed = self._drop_documents(lease, self.registry.documents_of(lease.event.source_key))
        self._finish(lease, status="deleted", etag="")
        return IngestOutcome(
            source_key=lease.event.source_key,
            sequencer=lease.event.sequencer,
            action="deleted",
            removed_documents=removed,
        )

    def _reject(self, lease: _Lease, exc: Rejected) -> IngestOutcome:
        event = lease.event
        log.warning("rejected %s: %s", event.uri, exc)
        # The bucket no longer holds what this key used to produce (nor what a failed attempt half wrote): the
        # index must not keep answering with it.
        removed = self._drop_documents(lease, self.registry.documents_of(event.source_key))
        self._finish(lease, status="failed", reason=exc.reason.value, error=exc.message)
        return IngestOutcome(
            source_key=event.source_key,
            sequencer=event.sequencer,
            action="failed",
            reason=exc.reason.value,
            removed_documents=removed,
        )

    def _drop_documents(self, lease: _Lease, documents: list[DocumentState]) -> int:
        """Remove the chunks of ``documents`` (those this object produced) and leave tombstones. A document on one
        shard goes with one delete request; one whose rows span shards (centroid placement) goes in one step to
        readers: its rows are retired at one epoch, committed once all are stamped, and deleted after the grace."""
        event = lease.event
        live = [d for d in documents if d.live and d.source_key == event.source_key]
        # Every shard the registry recorded (replicas included); the hash shard for items that predate it.
        shards_of = {d.doc_id: d.held_shards() if d.shards else [shard_for(d.doc_id, self._shard_count)] for d in live}
        spread = {d.doc_id for d in live if len(shards_of[d.doc_id]) > 1}
        epoch = 0
        if spread:
            snapshot = self._clock.snapshot()
            left = {d.epoch for d in live if d.doc_id in spread and d.status == "deleting"}
            adopt = len(left) == 1 and next(iter(left)) in snapshot.open
            adopt = adopt and all(d.status == "deleting" for d in live if d.doc_id in spread)
            epoch = next(iter(left)) if adopt else self._clock.begin()
        # Intent first: a crash while chunks are being removed must leave a record that says so (and the epoch a
        # retry adopts).
        self.registry.put_documents(
            [
                d.model_copy(
                    update={
                        "status": "deleting",
                        "sequencer": event.sequencer,
                        "epoch": epoch if d.doc_id in spread else d.epoch,
                    }
                )
                for d in live
                if d.status != "deleting" or (d.doc_id in spread and d.epoch != epoch)
            ],
            lease=lease.fence,
        )
        touched: set[int] = set()
        gone: dict[int, list[str]] = {}
        now = self._clock.snapshot() if spread else None
        for doc in live:
            shards = shards_of[doc.doc_id]
            touched.update(shards)
            if now is not None and doc.doc_id in spread:
                for shard, ids in self._settle(doc.doc_id, set(), shards, epoch, now).items():
                    gone.setdefault(shard, []).extend(ids)
                continue
            for shard in shards:
                self._stores(shard).delete_document(doc.doc_id)
        if spread:
            self._clock.commit(epoch)
            self._delete_retired(event, epoch, gone)
        if event.reconcile:
            # A repair also removes rows of documents already deleted: a superseded run may have landed some.
            for doc in documents:
                if doc.source_key == event.source_key and not doc.live:
                    for shard in _union(doc.held_shards(), self._indexer.may_hold(doc.doc_id)):
                        if self._stores(shard).delete_document(doc.doc_id):
                            touched.add(shard)
        for shard in sorted(touched):
            self._stores(shard).flush()
        tombstones = [
            d.model_copy(update={"status": "deleted", "sequencer": event.sequencer, "chunk_count": 0, "parts_done": 0})
            for d in documents
            if d.source_key == event.source_key and d.status != "deleted"
        ]
        self.registry.put_documents(tombstones, lease=lease.fence)
        return len(live)


def _lengths(vectors: Iterable[SparseVector | None]) -> tuple[int, int]:
    """Total BM25 length and number of lexical units, as the term statistics count them (a row that shares its
    unit with another row counts for nothing)."""
    tokens = units = 0
    for vector in vectors:
        if vector is not None and not counts_unit(vector):
            continue
        tokens += (stored_length(vector) or 0) if vector is not None else 0
        units += 1
    return tokens, units


def _union(*groups: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(shard for group in groups for shard in group))


def sqs_requeue(client: Any, queue_url: str) -> Requeue:
    """Send an event back to the ingest queue as an S3 notification body (what the handler consumes)."""

    def send(event: ObjectEvent, *, delay_s: int = 0) -> None:
        client.send_message(
            QueueUrl=queue_url, MessageBody=json.dumps(notification([event])), DelaySeconds=max(0, min(900, delay_s))
        )

    return send


def build_ingest_service(
    settings: IngestionSettings,
    *,
    indexer: DocumentIndexer,
    stores: Callable[[int], VectorStore],
    shard_count: int,
    s3_client: Any,
    dynamodb_client: Any,
    table_name: str,
    requeue: Requeue | None = None,
    on_change: Callable[[], object] | None = None,
    clock: EpochClock | None = None,
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
        requeue=requeue,
        on_change=on_change,
        clock=clock,
    )
