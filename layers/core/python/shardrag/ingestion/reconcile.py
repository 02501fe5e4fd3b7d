"""Reconciliation: compare the bucket listing with the registry and repair drift (missed or lost events).

Repairs are not applied here: they are emitted as S3-shaped events (marked ``reconcile``) and go through the
same queue and the same ingest function as real notifications, so that leases and order safety hold for them
too. A repair carries the sequencer the registry held when the reconciler looked; the claim succeeds only if
that is still current, so a real event that arrives meanwhile always wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from shardrag.ingestion.events import ZERO_SEQUENCER, ObjectEvent
from shardrag.ingestion.registry import DynamoDbRegistry, SourceState
from shardrag.ingestion.source import ObjectSource
from shardrag.records import Record


class ReconcileReport(Record):
    objects: int
    registered: int
    missing: list[str]
    changed: list[str]
    orphaned: list[str]
    retried: list[str]

    @property
    def repairs(self) -> int:
        return len(self.missing) + len(self.changed) + len(self.orphaned) + len(self.retried)


def _lease_expired(state: SourceState, now_ms: int) -> bool:
    """A worker claimed the key and never finished (crashed or timed out): its claim is over."""
    return state.status == "processing" and state.lease_until_ms < now_ms


class Reconciler:
    """Finds keys whose registry state disagrees with the bucket and hands repair events to ``send``."""

    def __init__(
        self,
        objects: ObjectSource,
        registry: DynamoDbRegistry,
        send: Callable[[Sequence[ObjectEvent]], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._objects = objects
        self._registry = registry
        self._send = send
        self._clock = clock

    def run(self, bucket: str, *, prefix: str = "", retry_failed: bool = False) -> ReconcileReport:
        listing = {info.key: info for info in self._objects.list_objects(bucket, prefix)}
        states: dict[str, SourceState] = {}
        for state in self._registry.sources():
            b, _, key = state.source_key.partition("/")
            if b == bucket and key.startswith(prefix):
                states[key] = state
        now_ms = int(self._clock() * 1000)
        missing: list[str] = []
        changed: list[str] = []
        orphaned: list[str] = []
        retried: list[str] = []
        repairs: list[ObjectEvent] = []
        for key, info in sorted(listing.items()):
            known = states.get(key)
            if known is None:
                missing.append(key)
                repairs.append(
                    ObjectEvent(
                        kind="created",
                        bucket=bucket,
                        key=key,
                        etag=info.etag,
                        size=info.size,
                        sequencer=ZERO_SEQUENCER,
                        event_name="ObjectCreated:Reconcile",
                    )
                )
                continue
            state = known
            stuck = _lease_expired(state, now_ms)
            differs = state.status == "deleted" or (state.status in ("indexed", "failed") and state.etag != info.etag)
            retry = retry_failed and state.status == "failed" and state.etag == info.etag
            if differs or stuck or retry:
                (retried if retry else changed).append(key)
                repairs.append(
                    ObjectEvent(
                        kind="created",
                        bucket=bucket,
                        key=key,
                        etag=info.etag,
                        size=info.size,
                        sequencer=state.sequencer,
                        reconcile=True,
                        event_name="ObjectCreated:Reconcile",
                    )
                )
        for key, state in sorted(states.items()):
            if key in listing:
                continue
            stuck = _lease_expired(state, now_ms)
            if state.status in ("indexed", "failed") or stuck:
                orphaned.append(key)
                repairs.append(
                    ObjectEvent(
                        kind="removed",
                        bucket=bucket,
                        key=key,
                        sequencer=state.sequencer,
                        reconcile=True,
                        event_name="ObjectRemoved:Reconcile",
                    )
                )
        for start in range(0, len(repairs), 10):
            self._send(repairs[start : start + 10])
        return ReconcileReport(
            objects=len(listing),
            registered=len(states),
            missing=missing,
            changed=changed,
            orphaned=orphaned,
            retried=retried,
        )
