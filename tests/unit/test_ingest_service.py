"""The ingest service against moto's S3 and DynamoDB, the in-memory store and the hashing embedder: order
safety, idempotent replays, tombstones, bulk files, parts, and the transient/permanent split."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from shardrag.chunking import Chunker, word_spans
from shardrag.config import IngestionSettings
from shardrag.identity import object_doc_id
from shardrag.indexing import DocumentIndexer
from shardrag.ingestion import (
    DynamoDbRegistry,
    IngestService,
    ObjectEvent,
    Reconciler,
    Retryable,
    S3ObjectSource,
    normalise_sequencer,
    notification,
    table_definition,
)
from shardrag.sharding import shard_for
from shardrag.store.memory import InMemoryVectorStore

BUCKET = "docs"
TABLE = "registry"
SHARDS = 3


class World:
    """A bucket, a registry, shards and a service, plus a log of the events S3 would have sent."""

    def __init__(self, embedder: Any, settings: IngestionSettings | None = None) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket=BUCKET)
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**table_definition(TABLE))
        self.stores = [InMemoryVectorStore(shard=i, dimension=embedder.dimension) for i in range(SHARDS)]
        self.settings = settings or IngestionSettings(chunk_size=16, chunk_overlap=4, part_bytes=4096)
        indexer = DocumentIndexer(
            chunker=Chunker(size=self.settings.chunk_size, overlap=self.settings.chunk_overlap, token_spans=word_spans),
            embedder=embedder,
            store_for=self.stores.__getitem__,
            shard_count=SHARDS,
        )
        self.registry = DynamoDbRegistry(ddb, TABLE)
        self.service = IngestService(
            self.settings,
            indexer=indexer,
            stores=self.stores.__getitem__,
            shard_count=SHARDS,
            registry=self.registry,
            objects=S3ObjectSource(self.s3),
        )
        self._seq = itertools.count(1)
        self.events: list[ObjectEvent] = []

    def put(self, key: str, body: bytes, **extra: Any) -> ObjectEvent:
        etag = self.s3.put_object(Bucket=BUCKET, Key=key, Body=body, **extra)["ETag"].strip('"')
        event = ObjectEvent(
            kind="created",
            bucket=BUCKET,
            key=key,
            etag=etag,
            size=len(body),
            sequencer=normalise_sequencer(f"{next(self._seq):x}"),
            event_name="ObjectCreated:Put",
        )
        self.events.append(event)
        return event

    def delete(self, key: str) -> ObjectEvent:
        self.s3.delete_object(Bucket=BUCKET, Key=key)
        event = ObjectEvent(
            kind="removed",
            bucket=BUCKET,
            key=key,
            sequencer=normalise_sequencer(f"{next(self._seq):x}"),
            event_name="ObjectRemoved:Delete",
        )
        self.events.append(event)
        return event

    def deliver(self, events: list[ObjectEvent], owner: str = "m") -> list[Any]:
        return [self.service.run(e, owner=f"{owner}-{i}") for i, e in enumerate(events)]

    def chunk_ids(self) -> set[str]:
        return {cid for store in self.stores for cid in store._rows}

    def texts(self) -> str:
        return " ".join(chunk.text for store in self.stores for chunk, _ in store._rows.values())

    def status(self, key: str) -> str:
        state = self.registry.get_source(f"{BUCKET}/{key}")
        return state.status if state else "none"


@pytest.fixture
def world(hashing_embedder: Any) -> Iterator[World]:
    with mock_aws():
        yield World(hashing_embedder)


def test_upload_indexes_on_the_hash_shard_with_source_and_title(world: World) -> None:
    world.deliver([world.put("notes/bees.md", b"# Bees\n\nHoneybees dance to point at flowers.\n")])
    shard = shard_for(object_doc_id("default", "notes/bees.md"), SHARDS)
    rows = list(world.stores[shard]._rows.values())
    assert rows and all(c.external_id == "notes/bees.md" for c, _ in rows)
    chunk = rows[0][0]
    assert chunk.source == "s3://docs/notes/bees.md" and chunk.title == "Bees" and chunk.position == 0
    assert world.status("notes/bees.md") == "indexed"


def test_overwrite_replaces_text_and_delete_leaves_a_tombstone(world: World) -> None:
    world.deliver([world.put("a.txt", b"the old heron goes to Antarctica")])
    world.deliver([world.put("a.txt", b"the new heron stays in Portugal")])
    assert "Portugal" in world.texts() and "Antarctica" not in world.texts()
    delete = world.delete("a.txt")
    world.deliver([delete])
    assert world.chunk_ids() == set()
    assert world.status("a.txt") == "deleted"
    # A create older than the delete, delivered late, cannot resurrect the document.
    late = world.events[0]
    assert world.deliver([late])[0].action == "stale"
    assert world.chunk_ids() == set()


@pytest.mark.parametrize("op_order", list(itertools.permutations(["v1", "v2", "delete"])))
@pytest.mark.parametrize("delivery", list(itertools.permutations(range(3))))
def test_every_operation_order_and_delivery_order_ends_in_what_s3_holds(
    world: World, op_order: tuple[str, ...], delivery: tuple[int, ...]
) -> None:
    key = "doc.txt"
    bodies = {"v1": b"version one talks about volcanoes", "v2": b"version two talks about glaciers"}
    events = [world.delete(key) if op == "delete" else world.put(key, bodies[op]) for op in op_order]
    world.deliver([events[i] for i in delivery])
    last = op_order[-1]
    if last == "delete":
        assert world.chunk_ids() == set()
        assert world.status(key) == "deleted"
    else:
        other = "v2" if last == "v1" else "v1"
        text = world.texts()
        assert bodies[last].decode() in text and bodies[other].decode() not in text
        assert world.status(key) == "indexed"


def test_replaying_every_event_three_times_shuffled_changes_nothing(world: World) -> None:
    world.deliver([world.put(f"f{i}.txt", f"file {i} says ".encode() + b"word " * (10 * i + 5)) for i in range(6)])
    world.deliver([world.put("f2.txt", b"file two rewritten entirely")])
    world.deliver([world.delete("f3.txt")])
    bulk = "\n".join(json.dumps({"_id": f"j{i}", "text": f"line document {i} " * 5}) for i in range(8))
    world.deliver([world.put("bulk.jsonl", bulk.encode())])
    before, count = world.chunk_ids(), sum(len(s._rows) for s in world.stores)
    replay = world.events * 3
    random.Random(7).shuffle(replay)
    outcomes = world.deliver(replay, owner="replay")
    assert {o.action for o in outcomes} <= {"stale", "duplicate"}
    assert world.chunk_ids() == before
    assert sum(len(s._rows) for s in world.stores) == count == len(before)


def test_one_hostile_file_in_a_batch_of_ten(world: World) -> None:
    events = [world.put(f"good-{i}.txt", f"good document number {i} about tides".encode()) for i in range(9)]
    events.insert(4, world.put("evil.txt", b"\x89PNG\r\n\x1a\n\x00\x00binary"))
    outcomes = world.deliver(events)
    assert sorted(o.action for o in outcomes) == ["failed"] + ["indexed"] * 9
    states = {s.source_key: s for s in world.registry.sources()}
    assert [s.status for s in states.values()].count("failed") == 1
    assert [s.status for s in states.values()].count("indexed") == 9
    assert states[f"{BUCKET}/evil.txt"].reason == "binary_content"


def test_bulk_jsonl_each_line_a_document_and_delete_removes_all(world: World) -> None:
    lines = [
        json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"body of document {i}", "metadata": {"n": i}})
        for i in range(5)
    ]
    lines.insert(2, "{not json")
    world.deliver([world.put("bulk.jsonl", "\n".join(lines).encode())])
    state = world.registry.get_source(f"{BUCKET}/bulk.jsonl")
    assert state is not None and state.status == "indexed" and state.doc_count == 5 and state.rejected_lines == 1
    docs = {c.external_id: c for s in world.stores for c, _ in s._rows.values()}
    assert set(docs) == {f"d{i}" for i in range(5)}
    assert docs["d3"].metadata == {"n": 3} and docs["d3"].title == "T3"
    # Re-upload without d4 and with d0 changed: d4 goes, d0 is re-embedded, the rest are untouched.
    lines2 = [json.dumps({"_id": "d0", "text": "changed body"}), *lines[1:2], *lines[3:5]]
    world.deliver([world.put("bulk.jsonl", "\n".join(lines2).encode())])
    docs = {c.external_id: c for s in world.stores for c, _ in s._rows.values()}
    assert set(docs) == {"d0", "d1", "d2", "d3"} and docs["d0"].text == "changed body"
    world.deliver([world.delete("bulk.jsonl")])
    assert world.chunk_ids() == set()
    assert {d.status for d in world.registry.documents_of(f"{BUCKET}/bulk.jsonl")} == {"deleted"}


class CountingSource(S3ObjectSource):
    largest = 0

    def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        CountingSource.largest = max(CountingSource.largest, end - start + 1)
        return super().read_range(bucket, key, start, end)


def test_a_large_document_is_read_and_indexed_in_parts(world: World) -> None:
    world.service._objects = CountingSource(world.s3)
    paragraphs = [f"Paragraph {i} " + " ".join(f"w{i}x{j}" for j in range(40)) for i in range(400)]
    body = "\n\n".join(paragraphs).encode()  # ~ 150 KB, parts of 4 KiB
    assert len(body) > 30 * world.settings.part_bytes
    world.deliver([world.put("big.txt", body)])
    assert CountingSource.largest <= world.settings.part_bytes
    chunks = sorted((c for s in world.stores for c, _ in s._rows.values()), key=lambda c: c.position)
    assert [c.position for c in chunks] == list(range(len(chunks)))  # numbered across parts, no collisions
    assert all(f"w{i}x39" in world.texts() for i in (0, 199, 399))
    state = world.registry.get_source(f"{BUCKET}/big.txt")
    assert state is not None and state.chunk_count == len(chunks)


def test_transient_store_failure_is_retryable_and_leaves_the_key_claimable(world: World) -> None:
    for store in world.stores:
        store.unavailable = True
    event = world.put("t.txt", b"some text that cannot be stored yet")
    with pytest.raises(Retryable):
        world.service.run(event, owner="m-1")
    for store in world.stores:
        store.unavailable = False
    # The redelivery (same message) and even another worker may take the key at once: the lease was released.
    assert world.service.run(event, owner="m-2").action == "indexed"


def test_a_key_held_by_another_worker_is_busy(world: World) -> None:
    first = world.put("b.txt", b"first")
    second = world.put("b.txt", b"second")
    world.registry.claim(first, owner="other", lease_s=60)
    with pytest.raises(Retryable, match="key_busy"):
        world.service.run(second, owner="me")


def test_handle_message_skips_test_events_and_decodes_keys(world: World) -> None:
    world.put("dir/with space+plus.txt", b"a file whose name needs decoding")
    assert world.service.handle_message(json.dumps({"Event": "s3:TestEvent", "Bucket": BUCKET}), "t") == []
    body = notification([world.events[-1]])
    assert body["Records"][0]["s3"]["object"]["key"] == "dir%2Fwith+space%2Bplus.txt"
    [outcome] = world.service.handle_message(json.dumps(body), "mid")
    assert outcome.action == "indexed" and outcome.source_key == f"{BUCKET}/dir/with space+plus.txt"


def test_reconcile_repairs_missed_events(world: World) -> None:
    world.deliver([world.put("kept.txt", b"kept document"), world.put("gone.txt", b"gone document")])
    world.put("missed.txt", b"an upload whose event was lost")  # never delivered
    world.s3.put_object(Bucket=BUCKET, Key="kept.txt", Body=b"kept but changed silently")  # no event
    world.s3.delete_object(Bucket=BUCKET, Key="gone.txt")  # no event
    sent: list[ObjectEvent] = []
    report = Reconciler(S3ObjectSource(world.s3), world.registry, sent.extend).run(BUCKET)
    assert report.missing == ["missed.txt"] and report.changed == ["kept.txt"] and report.orphaned == ["gone.txt"]
    world.deliver(sent)
    text = world.texts()
    assert "lost" in text and "silently" in text and "gone document" not in text
    again = Reconciler(S3ObjectSource(world.s3), world.registry, sent.extend).run(BUCKET)
    assert again.repairs == 0


def _tenants(world: World) -> set[tuple[str, str]]:
    return {(c.external_id, c.tenant) for s in world.stores for c, _ in s._rows.values()}


def test_tenant_from_the_key_prefix_and_bulk_ids_namespaced_per_tenant(hashing_embedder: Any) -> None:
    with mock_aws():
        world = World(hashing_embedder, IngestionSettings(chunk_size=16, chunk_overlap=4, tenant_source="key_prefix"))
        same_ids = "\n".join(json.dumps({"_id": f"d{i}", "text": f"document {i} body"}) for i in range(2))
        world.deliver(
            [world.put("acme/bulk.jsonl", same_ids.encode()), world.put("globex/bulk.jsonl", same_ids.encode())]
        )
        world.deliver([world.put("acme/notes.txt", b"acme notes about tides")])
        # The same line ids in two tenants' files stay two documents each, with the ids the files gave them.
        assert _tenants(world) == {
            ("d0", "acme"),
            ("d1", "acme"),
            ("d0", "globex"),
            ("d1", "globex"),
            ("acme/notes.txt", "acme"),
        }
        assert len({c.doc_id for s in world.stores for c, _ in s._rows.values()}) == 5
        # A key with no tenant segment (or an unusable one) is refused, not filed under a default tenant.
        outcomes = world.deliver([world.put("loose.txt", b"no tenant"), world.put("bad tenant!/x.txt", b"odd")])
        assert [o.action for o in outcomes] == ["failed", "failed"]
        assert {o.reason for o in outcomes} == {"no_tenant"}


def test_tenant_from_object_metadata(hashing_embedder: Any) -> None:
    with mock_aws():
        world = World(hashing_embedder, IngestionSettings(chunk_size=16, chunk_overlap=4, tenant_source="metadata"))
        world.deliver([world.put("a.txt", b"metadata tenant", Metadata={"tenant": "initech"})])
        assert _tenants(world) == {("a.txt", "initech")}
        assert world.deliver([world.put("b.txt", b"nobody's")])[0].reason == "no_tenant"
