"""Ingestion end to end in the local runtime: S3 upload -> notification -> SQS -> poller -> the real ingest
handler -> Milvus Lite shards with the real model -> answers through the query state machine."""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BUCKET = "shardrag-documents"


def _ask(runtime: Any, question: str, *, generate: bool = False) -> dict[str, Any]:
    status, body = runtime.execute({"question": question, "generate": generate, "top_k": 10})
    assert status == 200, body
    return dict(body)


def _put(runtime: Any, key: str, body: bytes) -> None:
    runtime.aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)


def _drain(runtime: Any) -> None:
    assert runtime.ingestion.wait_idle(120), "ingestion did not go idle"


def _all_chunk_ids(runtime: Any) -> list[str]:
    from shardrag import services

    ids: list[str] = []
    for store in services.shard_stores().all():
        ids += store.inner._query_ids('chunk_id != ""')
    return ids


def test_upload_overwrite_delete_lifecycle_with_citations(local_runtime: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"life/heron-{tag}.txt"
    question = f"Where does the heron Zorblat{tag} go?"
    _put(local_runtime, key, f"The quixotic heron Zorblat{tag} migrates to Antarctica every leap year.".encode())
    _drain(local_runtime)
    answer = _ask(local_runtime, question, generate=True)
    assert any(c["source"] == f"s3://{BUCKET}/{key}" for c in answer["citations"])
    assert "Antarctica" in json.dumps(answer["citations"])

    _put(local_runtime, key, f"The quixotic heron Zorblat{tag} now stays in Portugal all year.".encode())
    _drain(local_runtime)
    cited = json.dumps(_ask(local_runtime, question, generate=True)["citations"])
    assert "Portugal" in cited and "Antarctica" not in cited

    local_runtime.aws.client("s3").delete_object(Bucket=BUCKET, Key=key)
    _drain(local_runtime)
    response = _ask(local_runtime, question, generate=True)
    assert f"Zorblat{tag}" not in json.dumps(response)
    state = local_runtime.ingestion.registry.get_source(f"{BUCKET}/{key}")
    assert state is not None and state.status == "deleted"


def test_replaying_every_event_three_times_shuffled_changes_nothing(local_runtime: Any) -> None:
    for i in range(3):
        _put(local_runtime, f"replay/r{i}.md", f"# Replay {i}\n\nReplayed document number {i}.".encode())
    _put(local_runtime, "replay/r1.md", b"# Replay 1\n\nOverwritten once.")
    local_runtime.aws.client("s3").delete_object(Bucket=BUCKET, Key="replay/r2.md")
    _drain(local_runtime)
    before = _all_chunk_ids(local_runtime)
    journal = list(local_runtime.ingestion.poller.journal) * 3
    random.Random(3).shuffle(journal)
    sqs = local_runtime.aws.client("sqs")
    for body in journal:
        sqs.send_message(QueueUrl=local_runtime.ingestion.queue_url, MessageBody=body)
    _drain(local_runtime)
    after = _all_chunk_ids(local_runtime)
    assert len(after) == len(set(after)) == len(before)
    assert set(after) == set(before)


def test_all_six_orders_of_create_create_delete_end_in_what_s3_holds(local_runtime: Any) -> None:
    ingestion = local_runtime.ingestion
    sqs = local_runtime.aws.client("sqs")
    s3 = local_runtime.aws.client("s3")
    tag = uuid.uuid4().hex[:6]
    orders = list(itertools.permutations(["v1", "v2", "delete"]))
    ingestion.poller.pause()
    try:
        for n, order in enumerate(orders):
            key = f"orders/{tag}-{n}.txt"
            for op in order:
                if op == "delete":
                    s3.delete_object(Bucket=BUCKET, Key=key)
                else:
                    _put(local_runtime, key, f"order{tag} case {n} text {op} about lighthouses".encode())
        messages: list[dict[str, Any]] = []
        while batch := sqs.receive_message(QueueUrl=ingestion.queue_url, MaxNumberOfMessages=10).get("Messages"):
            messages += batch
            for m in batch:
                sqs.delete_message(QueueUrl=ingestion.queue_url, ReceiptHandle=m["ReceiptHandle"])
        assert len(messages) == 3 * len(orders) - sum(1 for o in orders if o[0] == "delete")  # deleting nothing
        # Deliver every key's events newest first: the worst order for a naive consumer.
        for m in reversed(messages):
            sqs.send_message(QueueUrl=ingestion.queue_url, MessageBody=m["Body"])
    finally:
        ingestion.poller.resume()
    _drain(local_runtime)
    text = json.dumps(_ask(local_runtime, f"order{tag} lighthouses")["hits"])
    for n, order in enumerate(orders):
        key = f"orders/{tag}-{n}.txt"
        state = ingestion.registry.get_source(f"{BUCKET}/{key}")
        assert state is not None
        if order[-1] == "delete":
            assert state.status == "deleted" and f"case {n} " not in text
        else:
            assert state.status == "indexed"
            assert f"case {n} text {order[-1]}" in text
            stale = "v1" if order[-1] == "v2" else "v2"
            assert f"case {n} text {stale}" not in text


def test_one_hostile_file_among_ten_fails_alone(local_runtime: Any) -> None:
    ingestion = local_runtime.ingestion
    tag = uuid.uuid4().hex[:6]
    ingestion.poller.pause()
    try:
        for i in range(9):
            _put(local_runtime, f"batch-{tag}/good-{i}.txt", f"good file {i} about coral reefs".encode())
        _put(local_runtime, f"batch-{tag}/evil.txt", b"\x7fELF\x02\x01\x01" + bytes(200))
    finally:
        ingestion.poller.resume()
    _drain(local_runtime)
    states = [s for s in ingestion.registry.sources() if s.source_key.startswith(f"{BUCKET}/batch-{tag}/")]
    assert sorted(s.status for s in states) == ["failed"] + ["indexed"] * 9
    assert next(s for s in states if s.status == "failed").reason == "binary_content"
    assert ingestion.dead_letters() == []


def test_transient_failures_reach_the_dead_letter_queue(local_runtime: Any) -> None:
    from shardrag.ingestion import ObjectEvent, normalise_sequencer, notification

    ingestion = local_runtime.ingestion
    sqs = local_runtime.aws.client("sqs")
    key = f"busy/{uuid.uuid4().hex[:6]}.txt"
    _put(local_runtime, key, b"a key another worker holds")
    _drain(local_runtime)
    held = ObjectEvent(kind="created", bucket=BUCKET, key=key, sequencer=normalise_sequencer("F" * 30))
    ingestion.registry.claim(held, owner="someone-else", lease_s=600)
    newer = held.model_copy(update={"sequencer": normalise_sequencer("F" * 31)})
    sqs.set_queue_attributes(QueueUrl=ingestion.queue_url, Attributes={"VisibilityTimeout": "1"})
    try:
        sqs.send_message(QueueUrl=ingestion.queue_url, MessageBody=json.dumps(notification([newer])))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ingestion.dead_letters():
            time.sleep(0.2)
        dead = ingestion.dead_letters()
        assert len(dead) == 1 and key.replace("/", "%2F") in dead[0]["Body"]
    finally:
        sqs.set_queue_attributes(
            QueueUrl=ingestion.queue_url, Attributes={"VisibilityTimeout": str(ingestion.visibility_timeout_s)}
        )
        sqs.purge_queue(QueueUrl=ingestion.dlq_url)


def test_a_large_generated_document_is_indexed_in_bounded_parts(local_runtime: Any) -> None:
    from shardrag import services
    from shardrag.config import IngestionSettings
    from shardrag.ingestion import ObjectEvent, S3ObjectSource, build_ingest_service

    class Counting(S3ObjectSource):
        largest = 0

        def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
            Counting.largest = max(Counting.largest, end - start + 1)
            return super().read_range(bucket, key, start, end)

    settings = IngestionSettings(part_bytes=16 * 1024)
    service = build_ingest_service(
        settings,
        indexer=services.build_indexer(local_runtime.settings),
        stores=services.shard_stores(),
        shard_count=local_runtime.settings.store.shard_count,
        s3_client=local_runtime.aws.client("s3"),
        dynamodb_client=local_runtime.aws.client("dynamodb"),
        table_name=local_runtime.ingestion.table,
    )
    service._objects = Counting(local_runtime.aws.client("s3"))
    rng = random.Random(5)
    words = ["granite", "basalt", "quartz", "mica", "feldspar", "obsidian", "pumice", "shale", "slate", "marble"]
    paragraphs = [" ".join(rng.choice(words) for _ in range(60)) + "." for _ in range(250)]
    paragraphs[-1] = "The final paragraph reveals that the vault code is seven-seven-tangerine."
    body = "\n\n".join(paragraphs).encode()  # ~ 120 KB: 8 parts of 16 KiB
    key = f"large/rocks-{uuid.uuid4().hex[:6]}.txt"
    # Upload with the bucket's notification in place, but process with the small-part service directly.
    local_runtime.ingestion.poller.pause()
    try:
        etag = local_runtime.aws.client("s3").put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
        outcome = service.run(
            ObjectEvent(kind="created", bucket=BUCKET, key=key, etag=etag, size=len(body), sequencer="1" * 32),
            owner="large-test",
        )
    finally:
        local_runtime.ingestion.poller.resume()
    _drain(local_runtime)
    assert outcome.action == "indexed" and Counting.largest <= settings.part_bytes
    assert len(body) > 6 * settings.part_bytes
    hits = _ask(local_runtime, "What is the vault code?")["hits"]
    assert any("tangerine" in h["text"] and h["doc_id"] == key for h in hits)
    store = services.shard_stores()(hits[0]["shard"]) if hits else None
    assert store is not None
    from shardrag.identity import object_doc_id
    from shardrag.sharding import shard_for

    doc_id = object_doc_id("default", key)
    ids = services.shard_stores()(shard_for(doc_id, local_runtime.settings.store.shard_count)).chunk_ids(doc_id)
    assert len(ids) == outcome.chunks == len(set(ids))
