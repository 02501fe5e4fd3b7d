"""A model-based test of ingestion: random sequences of uploads, overwrites and deletes of objects and bulk
files across tenants, delivered duplicated and out of order through the real ingest handler, with transient
S3 / DynamoDB / shard / term-statistics failures and worker crashes injected at any step (a crash between a
shard write and its term-statistics update, inside one call, is the documented exception). After the queue
drains, the index must hold exactly the chunks a clean ingest of the bucket's current objects gives (per shard,
per tenant, with the ids their owners gave them), the registry must agree, and the BM25 statistics must equal a
recount.

``make test`` runs a bounded number of examples; ``make bench`` runs a long search
(``SHARDRAG_MODEL_EXAMPLES``, e.g. 500)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from moto import mock_aws
from shardrag.config import IngestionSettings

from .ingest_harness import FaultPlan, IngestSystem, MilvusShards

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("SHARDRAG_MODEL_EXAMPLES", "12"))
STEPS = int(os.environ.get("SHARDRAG_MODEL_STEPS", "24"))
SETTINGS = IngestionSettings(
    chunk_size=32,
    chunk_overlap=8,
    part_bytes=4096,
    lease_s=60,
    tenant_source="key_prefix",
    jsonl_batch_documents=2,
    # Retired rows deleted by delayed messages, interleaved with the other events (due once the clock moves on).
    retire_grace_s=30,
)

TEXT_KEYS = [
    "acme/a.txt",
    "globex/a.txt",
    "acme/notes/a.txt",
    "acme/" + "ü" * 480 + ".txt",  # a key over Milvus's 512-byte id limit
    "globex/line\nbreak.txt",  # a control character in the key
    "loose.txt",  # no tenant segment: refused
]
BULK_KEYS = ["acme/bulk.jsonl", "globex/bulk.jsonl"]


def _large(tag: str) -> bytes:
    return "\n\n".join(f"Part {i} {tag}: basalt cools into hexagonal columns by the sea." for i in range(160)).encode()


TEXT_BODIES = {
    "short-1": b"Herons fish at dawn along the estuary.",
    "short-2": b"Herons now fish at dusk, far up the river.",
    "large-1": _large("first"),  # several parts of 4 KiB
    "large-2": _large("second"),
    "binary": b"\x00\x01\x02PK binary bytes",  # hostile: rejected as binary
}
BULK_BODIES = [
    [{"_id": "a.txt", "text": "A bulk line whose id is another object's key."}, {"_id": "n1", "text": "Tides."}],
    [{"_id": "acme/a.txt", "text": "A line that names a key."}, {"_id": "n1", "text": "Tides, changed."}],
    [{"_id": "n1", "text": "Tides."}, {"_id": "n2", "text": "Bees."}, {"_id": "漢" * 300, "text": "id too long"}],
]


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Any:
    shards = MilvusShards(tmp_path_factory.mktemp("model-shards"), 4)
    yield shards
    shards.close()


def test_ingestion_keeps_the_index_true_to_the_bucket(milvus: MilvusShards, tmp_path: Path) -> None:
    class Ingestion(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            milvus.clear()
            self.system = IngestSystem(milvus, tmp_path, SETTINGS, per_tenant=True, plan=FaultPlan())
            self.system.__enter__()

        @rule(key=st.sampled_from(TEXT_KEYS), body=st.sampled_from(sorted(TEXT_BODIES)))
        def put_object(self, key: str, body: str) -> None:
            self.system.put(key, TEXT_BODIES[body])

        @rule(key=st.sampled_from(BULK_KEYS), lines=st.integers(0, len(BULK_BODIES) - 1))
        def put_bulk_file(self, key: str, lines: int) -> None:
            self.system.put(key, "\n".join(json.dumps(x, ensure_ascii=False) for x in BULK_BODIES[lines]).encode())

        @rule(key=st.sampled_from(TEXT_KEYS + BULK_KEYS))
        def delete(self, key: str) -> None:
            self.system.delete(key)

        @precondition(lambda self: self.system.queue)
        @rule(pick=st.integers(0, 50), duplicate=st.booleans())
        def deliver(self, pick: int, duplicate: bool) -> None:
            # Any queued message, not the oldest: S3 and SQS deliver out of order, and at least once.
            self.system.deliver(pick % len(self.system.queue), keep=duplicate)

        @rule(
            at=st.integers(1, 40),
            kind=st.sampled_from(["transient", "crash", "lost"]),
            where=st.sampled_from(["", "store.", "s3.", "ddb.", "stats."]),
        )
        def inject_fault(self, at: int, kind: str, where: str) -> None:
            self.system.plan.arm(at, kind, only=where)

        @rule()
        def leases_run_out(self) -> None:
            self.system.clock.now += SETTINGS.lease_s + 1

        @invariant()
        def nothing_half_written_is_called_indexed(self) -> None:
            for doc in _registry_documents(self.system):
                if doc["status"] == "indexed" and doc.get("parts_done"):
                    raise AssertionError(f"indexed with parts still counted: {doc}")

        def teardown(self) -> None:
            try:
                self.system.drain()
                _assert_true_to_the_bucket(self.system)
            finally:
                self.system.__exit__()

    with mock_aws():
        run = settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )(Ingestion)
        run.TestCase().runTest()


def _registry_documents(system: IngestSystem) -> list[dict[str, Any]]:
    from shardrag.ingestion.registry import _plain

    items: list[dict[str, Any]] = []
    for page in system.ddb.get_paginator("scan").paginate(TableName=system.table):
        items += [_plain(i) for i in page["Items"] if i.get("kind", {}).get("S") == "document"]
    return items


def _assert_true_to_the_bucket(system: IngestSystem) -> None:
    stored = system.shards.rows()
    reference = system.reference_rows()
    if stored != reference:
        extra = sorted((i, r[3], r[1], r[0][-5:]) for i in stored for r in stored[i] - reference.get(i, set()))
        missing = sorted((i, r[3], r[1], r[0][-5:]) for i in reference for r in reference[i] - stored.get(i, set()))
        raise AssertionError(f"the index differs from a clean ingest: extra {extra[:8]} missing {missing[:8]}")
    for table in system.recount():
        assert table["kept"] == table["recount"], f"BM25 statistics drifted: {table}"
    objects = system.objects()
    live = {d["pk"].removeprefix("doc#") for d in _registry_documents(system) if d["status"] == "indexed"}
    indexed_ids = {row[0].split("::")[0] for rows in stored.values() for row in rows}
    assert live == indexed_ids, "the registry's live documents differ from the index's"
    assert not [d for d in _registry_documents(system) if d["status"] == "writing"]
    for state in system.service.registry.sources():
        key = state.source_key.split("/", 1)[1]
        if key in objects:
            assert state.status in ("indexed", "failed"), state
        else:
            assert state.status == "deleted", state
