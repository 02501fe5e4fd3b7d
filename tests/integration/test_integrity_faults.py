"""Nothing lost, nothing mixed, nothing leaked: the reproduced integrity defects, each on real Milvus Lite shards
with the BM25 term accounting on, through the real ingest handler where the defect lives there.

Each test names the defect it reproduces (issue 11, as reviewed at e09a5fc) and checks the outcome a user is
owed: the index holds exactly what a clean ingest of the bucket gives, and the statistics equal a recount."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from shardrag.bm25 import Tokenizer, counts_unit, term_id
from shardrag.config import IngestionSettings
from shardrag.identity import object_doc_id
from shardrag.ingestion.registry import LeaseLost
from shardrag.ingestion.service import VERSION_CHECK_S

from .ingest_harness import FaultPlan, IngestSystem, MilvusShards

pytestmark = pytest.mark.integration
SHARDS = 4
SETTINGS = IngestionSettings(chunk_size=32, chunk_overlap=8, part_bytes=4096, lease_s=60)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusShards]:
    opened = MilvusShards(tmp_path_factory.mktemp("integrity-shards"), SHARDS)
    yield opened
    opened.close()


@pytest.fixture
def make(shards: MilvusShards, tmp_path: Path) -> Iterator[Any]:
    shards.clear()
    with mock_aws():
        made: list[IngestSystem] = []

        def build(
            settings: IngestionSettings = SETTINGS, *, per_tenant: bool = False, journal: bool = True
        ) -> IngestSystem:
            system = IngestSystem(shards, tmp_path, settings, per_tenant=per_tenant, plan=FaultPlan(), journal=journal)
            system.__enter__()
            made.append(system)
            return system

        yield build
        for system in made:
            system.__exit__()


def _assert_true_to_the_bucket(system: IngestSystem) -> None:
    assert system.shards.rows() == system.reference_rows()
    for table in system.recount():
        assert table["kept"] == table["recount"], table


def _large_text(paragraphs: int = 300, tag: str = "") -> bytes:
    return "\n\n".join(
        f"Paragraph {i} {tag}: the basalt column number {i} cooled slowly into hexagonal joints near the sea."
        for i in range(paragraphs)
    ).encode()


# -- found by the long model search (250 x 40, seed 1204277...): a statistics delta outlived only in memory ---------
@pytest.mark.parametrize("crash_at", ["store.", "ddb.", "s3."])
@pytest.mark.parametrize("failure", ["transient", "lost"])
def test_a_delta_whose_flush_failed_is_counted_although_the_worker_then_dies(
    make: Any, failure: str, crash_at: str
) -> None:
    """The rows are written, the table's update fails (or lands and its response is lost), and the worker dies
    before its next flush: the retry reads the rows back as stored and counts nothing, so only the journal can
    carry the delta over, and only its id keeps a landed one from counting twice."""
    system = make(per_tenant=True)
    system.put("acme/bulk.jsonl", b'{"_id": "n1", "text": "Tides."}\n{"_id": "n2", "text": "Bees."}')
    system.plan.arm(1, failure, only="stats.put")
    assert system.deliver(keep=True) == "retry"
    assert system.plan.fired == [f"{failure}@stats.put"]
    system.plan.arm(1, "crash", only=crash_at)
    assert system.deliver() == "crash"
    system.drain()
    _assert_true_to_the_bucket(system)
    assert not _journal(system), "a folded entry stayed in the journal"


def _journal(system: IngestSystem) -> list[Any]:
    from shardrag.ingestion.registry import DynamoDbDeltaJournal

    return DynamoDbDeltaJournal(system.ddb, system.table).entries()


# -- defect 1: a multi-part file interrupted mid-way ended `indexed` with a fraction of its chunks --------------
@pytest.mark.parametrize("kind", ["transient", "crash"])
def test_a_large_file_interrupted_at_its_fourth_upsert_ends_complete(make: Any, kind: str) -> None:
    system = make()
    body = _large_text()
    assert len(body) > 3 * SETTINGS.part_bytes
    system.put("geology/basalt.txt", body)
    system.plan.arm(4, kind, only="store.upsert")
    assert system.deliver() == ("retry" if kind == "transient" else "crash")
    assert system.plan.fired == [f"{kind}@store.upsert"]
    system.drain()
    _assert_true_to_the_bucket(system)
    state = system.service.registry.get_documents([object_doc_id("default", "geology/basalt.txt")])
    [doc] = state.values()
    stored = sum(len(rows) for rows in system.shards.rows().values())
    assert doc.status == "indexed" and doc.chunk_count == stored > 20


def test_a_retry_after_a_partial_write_resumes_after_the_parts_already_written(make: Any) -> None:
    system = make()
    upserts = {"n": 0}

    def count(name: str) -> None:
        upserts["n"] += name == "store.upsert"

    with system.plan.watching(count):
        system.put("geology/whole.txt", _large_text(tag="w"))
        system.drain()
        parts = upserts["n"]  # one upsert per part (one shard: hash placement)
        system.put("geology/basalt.txt", _large_text(tag="w"))
        system.plan.arm(3, "transient", only="store.upsert")
        assert system.deliver() == "retry"
        upserts["n"] = 0
        system.drain()
    # Parts 1 and 2 were recorded as written: the retry upserts only from part 3 on.
    assert parts > 3 and upserts["n"] == parts - 2
    _assert_true_to_the_bucket(system)


# -- defect 2: a bulk line whose _id equals an object key replaced, then deleted, that object --------------------
def test_a_bulk_line_can_neither_replace_nor_delete_an_object_with_its_key(make: Any) -> None:
    system = make()
    system.put("notes/a.txt", b"Herons fish at dawn along the estuary.")
    line = {"_id": "notes/a.txt", "text": "Completely different: espresso extraction takes 25 seconds."}
    system.put("bulk.jsonl", json.dumps(line).encode())
    system.drain()
    rows = [r for shard in system.shards.rows().values() for r in shard]
    assert {r[3] for r in rows} == {"notes/a.txt"}  # both show the id their owner gave them
    assert {"Herons" in r[4] for r in rows} == {True, False}  # and both are there
    system.delete("bulk.jsonl")
    system.drain()
    texts = [r[4] for shard in system.shards.rows().values() for r in shard]
    assert texts and all("Herons" in t for t in texts)
    _assert_true_to_the_bucket(system)


def test_one_tenants_bulk_line_cannot_write_another_tenants_object(make: Any) -> None:
    system = make(IngestionSettings(**{**SETTINGS.model_dump(), "tenant_source": "metadata"}), per_tenant=True)
    # Before, tenant A's line "x.txt" got the id "A/x.txt": tenant B's object at that key.
    system.put("A/x.txt", b"Tenant B's private memo about zorblax.", Metadata={"tenant": "B"})
    system.put(
        "upload.jsonl", json.dumps({"_id": "x.txt", "text": "Tenant A's note."}).encode(), Metadata={"tenant": "A"}
    )
    system.drain()
    owners = {(r[2], r[3]) for shard in system.shards.rows().values() for r in shard}
    assert owners == {("B", "A/x.txt"), ("A", "x.txt")}
    system.delete("upload.jsonl")
    system.drain()
    assert {(r[2], r[3]) for shard in system.shards.rows().values() for r in shard} == {("B", "A/x.txt")}
    _assert_true_to_the_bucket(system)


# -- defect 5: a key with a newline could never be deleted (its delete filter did not parse) --------------------
def test_keys_with_control_characters_index_and_delete(make: Any) -> None:
    system = make()
    keys = ["odd/line\nbreak.txt", "odd/tab\tand\rreturn.txt", 'odd/quote"and\\backslash.txt']
    for key in keys:
        system.put(key, f"A document stored under the key {key!r}.".encode())
    system.drain()
    assert {r[3] for shard in system.shards.rows().values() for r in shard} == set(keys)
    for key in keys:
        system.delete(key)
    system.drain()
    assert all(not rows for rows in system.shards.rows().values())
    _assert_true_to_the_bucket(system)


# -- defect 6: ids over 512 bytes failed the upsert and were retried until the dead-letter queue -----------------
def test_ids_longer_than_the_store_allows_are_stored_or_rejected_never_retried(make: Any) -> None:
    system = make()
    long_key = "deep/" + "ü" * 480 + ".txt"  # 965 bytes: under S3's 1,024, over Milvus's 512
    assert 512 < len(long_key.encode()) <= 1024
    system.put(long_key, b"A document under a very long key.")
    lines = [
        {"_id": "漢" * 300, "text": "An id of 300 characters is 900 bytes."},
        {"_id": "ok", "text": "A line with a short id."},
    ]
    system.put("ids.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines).encode())
    assert [system.deliver(0), system.deliver(0)] == ["ok", "ok"]  # no retry, nothing left for the DLQ
    assert {r[3] for shard in system.shards.rows().values() for r in shard} == {long_key, "ok"}
    source = system.service.registry.get_source(f"{system.bucket}/ids.jsonl")
    assert source is not None and source.status == "indexed" and source.rejected_lines == 1
    assert "_id longer than 512 bytes" in source.error
    _assert_true_to_the_bucket(system)


# -- defect 7: with no registry record of v1 (a failed registry write), v1 survived v2 ---------------------------
def test_a_failed_registry_write_never_leaves_the_previous_version_behind(make: Any) -> None:
    system = make()
    system.put("notes/tides.txt", b"Version one: the tides follow the Moon.")
    # v1's chunks are written, then the registry write that would record them fails ...
    system.plan.arm(2, "transient", only="ddb.transact_write_items")
    assert system.deliver() == "retry"
    # ... and v2 arrives before v1's retry (which is then stale).
    system.put("notes/tides.txt", b"Version two: the tides follow the Moon and the Sun.")
    system.queue.reverse()
    system.drain()
    texts = [r[4] for shard in system.shards.rows().values() for r in shard]
    assert texts and all(t.startswith("Version two") for t in texts)
    _assert_true_to_the_bucket(system)


# -- defect 9: a worker that lost its lease kept writing -----------------------------------------------------------
def test_a_worker_that_loses_its_lease_stops_and_takes_back_what_it_wrote(make: Any) -> None:
    system = make()
    first = system.put("geology/basalt.txt", _large_text(tag="first"))
    system.queue.clear()  # the first worker is driven by hand below
    calls = {"update_item": 0}

    def stall(name: str) -> None:
        # The first worker stalls before renewing its lease for its second part (a slow part, a long GC pause):
        # its lease runs out, a newer version is uploaded, and another worker processes it start to finish.
        if name == "ddb.update_item":
            calls["update_item"] += 1
            if calls["update_item"] == 3:
                system.put("geology/basalt.txt", _large_text(tag="second"))
                system.clock.now += SETTINGS.lease_s + 1
                system.drain()

    with system.plan.watching(stall):
        outcome = system.service.run(first, owner="stalled-worker")
    assert outcome.action == "superseded"
    texts = [r[4] for shard in system.shards.rows().values() for r in shard]
    assert texts and all("second" in t for t in texts), "the first worker's late parts are in the index"
    [doc] = system.service.registry.documents_of(f"{system.bucket}/geology/basalt.txt")
    source = system.service.registry.get_source(f"{system.bucket}/geology/basalt.txt")
    assert doc.status == "indexed" and source is not None and doc.version == source.etag != first.etag
    _assert_true_to_the_bucket(system)


def test_rows_a_superseded_worker_lands_after_the_new_owner_finished_are_repaired_away(make: Any) -> None:
    # Rows are ids of their content, so a worker that lost its lease must not delete what it wrote (the new owner
    # may keep those very rows). Its late rows, landed after the new owner's sweep, are swept by a repair.
    system = make()
    first = system.put("geology/basalt.txt", _large_text(tag="first"))
    system.queue.clear()  # the first worker is driven by hand below
    calls = {"upsert": 0}

    def stall(name: str) -> None:
        if name == "store.upsert":
            calls["upsert"] += 1
            if calls["upsert"] == 3:
                # Inside its third shard write (its lease renewed just before): the worker pauses, the lease runs
                # out, a newer version is indexed start to finish, and then this write lands.
                system.put("geology/basalt.txt", _large_text(tag="second"))
                system.clock.now += SETTINGS.lease_s + 1
                system.drain()

    with system.plan.watching(stall):
        outcome = system.service.run(first, owner="stalled-worker")
    assert outcome.action == "superseded" and calls["upsert"] >= 3
    texts = [r[4] for shard in system.shards.rows().values() for r in shard]
    assert texts and all("second" in t for t in texts), "the first worker's late rows are in the index"
    _assert_true_to_the_bucket(system)


def _texts(system: IngestSystem) -> list[str]:
    return [r[4] for shard in system.shards.rows().values() for r in shard]


def test_a_version_replaced_in_the_bucket_mid_run_stops_and_the_newer_one_takes_over(make: Any) -> None:
    # Embedding a version that the bucket no longer holds is wasted work: the run notices (between store writes)
    # and hands the key on; the newer event then indexes what the bucket holds, keeping what the two share.
    system = make(IngestionSettings(**{**SETTINGS.model_dump(), "write_batch_chunks": 4}))
    first = system.put("geology/basalt.txt", _large_text(tag="first"))
    system.queue.clear()
    calls = {"upsert": 0}

    def overwrite_midway(name: str) -> None:
        if name == "store.upsert":
            calls["upsert"] += 1
            if calls["upsert"] == 3:
                system.put("geology/basalt.txt", _large_text(tag="second"))
                time.sleep(VERSION_CHECK_S + 0.05)  # the run checks the bucket at most this often

    with system.plan.watching(overwrite_midway):
        outcome = system.service.run(first, owner="first-worker")
    assert (outcome.action, outcome.reason) == ("superseded", "replaced")
    assert calls["upsert"] < 8, "the run went on writing a replaced version"
    system.drain()
    texts = _texts(system)
    assert texts and all("second" in t for t in texts)
    _assert_true_to_the_bucket(system)


def test_a_version_replaced_while_its_batch_is_embedded_stops_inside_the_batch(make: Any) -> None:
    # A write batch takes seconds to embed (128 chunks): the run checks the bucket between the texts it embeds,
    # not only between batches, so a replaced version stops within a second. Locally one poller
    # runs one invocation at a time, and the edit that replaced it waited for the whole batch (acceptance L).
    system = make(IngestionSettings(**{**SETTINGS.model_dump(), "write_batch_chunks": 10_000, "part_bytes": 1 << 20}))
    first = system.put("geology/basalt.txt", _large_text(tag="first"))
    system.queue.clear()
    embed = system.embedder.embed
    embedded: list[int] = []
    upserts = {"count": 0}

    def replaced_first(texts: Any) -> Any:
        if not embedded:
            system.put("geology/basalt.txt", _large_text(tag="second"))
            time.sleep(VERSION_CHECK_S + 0.05)
        embedded.append(len(texts))
        return embed(texts)

    def count(name: str) -> None:
        upserts["count"] += name == "store.upsert"

    system.embedder.embed = replaced_first  # type: ignore[method-assign]
    with system.plan.watching(count):
        outcome = system.service.run(first, owner="first-worker")
    system.embedder.embed = embed  # type: ignore[method-assign]
    assert embedded and embedded[0] > 100, "the document is one batch"
    assert (outcome.action, outcome.reason) == ("superseded", "replaced")
    assert upserts["count"] == 0, "the replaced version's batch was written"
    system.drain()
    texts = _texts(system)
    assert texts and all("second" in t for t in texts)
    _assert_true_to_the_bucket(system)


def test_a_newer_event_takes_the_key_from_a_run_that_only_adds_rows(make: Any) -> None:
    # Deployed, events for one key run in parallel invocations: a newer version must not wait for a stale one
    # to be embedded to the end. While a run only adds rows its lease is preemptible; the newer event claims the
    # key at once, and the older run stops at its next registry write.
    system = make()
    first = system.put("geology/basalt.txt", _large_text(tag="first"))
    system.queue.clear()
    calls = {"upsert": 0}
    taken: list[str] = []

    def newer_event_meanwhile(name: str) -> None:
        if name == "store.upsert" and not taken:
            calls["upsert"] += 1
            if calls["upsert"] == 2:
                # No clock moves: the first run's lease is live, only preemptible.
                system.put("geology/basalt.txt", _large_text(tag="second"))
                taken.append("delivering")
                taken[-1] = system.deliver()

    with system.plan.watching(newer_event_meanwhile):
        outcome = system.service.run(first, owner="first-worker")
    assert taken == ["ok"] and outcome.action == "superseded"
    system.drain()
    texts = _texts(system)
    assert texts and all("second" in t for t in texts)
    _assert_true_to_the_bucket(system)


def test_a_live_lease_that_is_not_preemptible_keeps_a_newer_event_waiting(make: Any) -> None:
    from shardrag.ingestion.registry import Claim

    system = make()
    first = system.put("notes/a.txt", b"One version.")
    second = system.put("notes/a.txt", b"Another version.")
    registry = system.service.registry
    assert registry.claim(first, owner="a", lease_s=60)[0] is Claim.ACQUIRED
    assert registry.claim(second, owner="b", lease_s=60)[0] is Claim.BUSY
    registry.preemptible(first, owner="a", allowed=True)
    assert registry.claim(second, owner="b", lease_s=60)[0] is Claim.ACQUIRED
    with pytest.raises(LeaseLost):
        registry.preemptible(first, owner="a", allowed=False)
    # The new holder starts not preemptible.
    third = system.put("notes/a.txt", b"A third version.")
    assert registry.claim(third, owner="c", lease_s=60)[0] is Claim.BUSY


def test_an_edit_in_an_early_part_shows_its_old_text_until_the_whole_new_version_is_in(make: Any) -> None:
    # The new version's rows are written part by part, the edited paragraph's among the first; a query must go
    # on seeing the old text (and not the new) until the last part is in, then the new text (and not the old).
    system = make()
    paragraphs = _large_text().decode().split("\n\n")
    system.put("geology/basalt.txt", "\n\n".join(paragraphs).encode())
    system.drain()
    paragraphs[3] = "Paragraph 3 was rewritten: the columns here are pentagonal, a rare case."
    system.put("geology/basalt.txt", "\n\n".join(paragraphs).encode())
    seen: list[tuple[bool, bool]] = []
    stored_new_early = []

    def look(name: str) -> None:
        if name in ("ddb.update_item", "store.upsert", "store.retire", "store.delete_chunks"):
            _, texts = system.shards.searchable(system.snapshot())
            seen.append((any("pentagonal" in t for t in texts), any(t.startswith("Paragraph 3 :") for t in texts)))
            stored_new_early.append(any("pentagonal" in t for t in _texts(system)))

    with system.plan.watching(look):
        system.drain()
    switch = seen.index((True, False))
    assert all(s == (False, True) for s in seen[:switch]) and all(s == (True, False) for s in seen[switch:]), seen
    # The new text was stored long before queries saw it: parts were still being written.
    assert stored_new_early.index(True) < switch - 2
    _assert_true_to_the_bucket(system)


def _lexically_found(system: IngestSystem, word: str) -> bool:
    """Whether a row that a query starting now sees holds ``word`` in its BM25 side (a ``bm25`` query for it
    would find the document)."""
    [term] = [term_id(t) for t in Tokenizer().terms(word)]
    return term in system.shards.searchable(system.snapshot())[0]


def test_an_edit_inside_a_lexical_unit_trades_its_old_words_for_the_new_ones_in_one_step(make: Any) -> None:
    # With lexical units a unit's first row carries the weights of the whole unit: an edited paragraph that is not
    # its unit's first chunk leaves its old words in a row whose own text is unchanged. A query must find the old
    # word until the new version is complete and the new word from then on: never both (a mix of versions, what
    # the early sweep that preceded epochs left for a write batch or two), never neither (a gap).
    system = make()
    paragraphs = _large_text().decode().split("\n\n")
    edited = 60
    paragraphs[edited] = f"Paragraph {edited} mentions obsidianold columns."
    system.put("geology/basalt.txt", "\n\n".join(paragraphs).encode())
    system.drain()
    # The case the test is about: the old word is carried by its unit's first row, a row with other text.
    [holder] = [
        c for store in system.shards.milvus for batch in store.scan() for c in batch if "obsidianold" in c.chunk.text
    ]
    assert holder.sparse is not None and not counts_unit(holder.sparse)
    assert _lexically_found(system, "obsidianold")
    paragraphs[edited] = f"Paragraph {edited} now mentions pentagonal columns."
    system.put("geology/basalt.txt", "\n\n".join(paragraphs).encode())
    seen: list[tuple[bool, bool]] = []
    stored_both = []
    terms = {term_id(t) for word in ("pentagonal", "obsidianold") for t in Tokenizer().terms(word)}

    def look(name: str) -> None:
        if name in ("ddb.update_item", "store.upsert", "store.retire", "store.delete_chunks"):
            seen.append((_lexically_found(system, "pentagonal"), _lexically_found(system, "obsidianold")))
            stored_both.append(terms <= system.shards.searchable()[0])

    with system.plan.watching(look):
        system.drain()
    # Old, then new, switching once, while the store held both words at some moment: the snapshot hides the mix.
    assert any(stored_both)
    assert set(seen) == {(False, True), (True, False)}, seen
    switch = seen.index((True, False))
    assert all(s == (False, True) for s in seen[:switch]) and all(s == (True, False) for s in seen[switch:])
    assert not _lexically_found(system, "obsidianold")
    _assert_true_to_the_bucket(system)


@pytest.mark.parametrize("crash_at", ["store.retire", "store.delete_chunks"])
def test_a_worker_that_dies_before_its_commit_leaves_the_old_version_whole_and_the_retry_commits(
    make: Any, crash_at: str
) -> None:
    # The new rows are written, some old ones stamped retired (or an earlier attempt's leftovers being deleted):
    # the worker dies before the epoch commits. Queries must go on seeing the old version, whole; the redelivery
    # adopts the open epoch, and its commit brings the new version in, whole.
    system = make()
    old = _large_text(60, "old")
    system.put("geology/basalt.txt", old)
    system.drain()
    paragraphs = old.decode().split("\n\n")
    paragraphs[10] = "Paragraph 10 was rewritten about pentagonal joints."
    paragraphs[40] = "Paragraph 40 was rewritten about obsidian flows."
    del paragraphs[50]
    system.put("geology/basalt.txt", "\n\n".join(paragraphs).encode())
    if crash_at == "store.delete_chunks":
        # An earlier attempt's rows to delete first: a crash after the writes, before anything is retired.
        system.plan.arm(1, "crash", only="store.retire")
        assert system.deliver(0) == "crash"
        paragraphs[20] = "Paragraph 20 was rewritten too, in a third version."
        system.queue.clear()
        system.put("geology/basalt.txt", "\n\n".join(paragraphs).encode())
        system.clock.now += SETTINGS.lease_s + 1  # the dead worker's lease runs out
    system.plan.arm(1, "crash", only=crash_at)
    assert system.deliver(0) == "crash"
    [open_epoch] = system.snapshot().open
    _, texts = system.shards.searchable(system.snapshot())
    seen = "\n".join(texts)
    assert "rewritten" not in seen and all(f"Paragraph {i} old:" in seen for i in (10, 20, 40, 50))
    assert any("rewritten" in t for t in _texts(system))  # stored, unseen
    system.clock.now += SETTINGS.lease_s + 1
    system.drain()
    after = system.snapshot()
    assert after.open == [] and after.upto == open_epoch  # the retry adopted the epoch and committed it
    _, texts = system.shards.searchable(after)
    seen = "\n".join(texts)
    assert "pentagonal" in seen and "obsidian" in seen and "Paragraph 50 old:" not in seen
    assert "Paragraph 10 old:" not in seen and "Paragraph 40 old:" not in seen
    _assert_true_to_the_bucket(system)


def test_a_bulk_file_overwrite_shows_each_document_in_one_version_at_every_moment(make: Any) -> None:
    # A JSON Lines file is written batch by batch, each batch one epoch: a query sees each document of a batch
    # before the batch's commit or after it, never both versions of it, never neither.
    system = make(IngestionSettings(**{**SETTINGS.model_dump(), "jsonl_batch_documents": 4}))

    def body(notes: dict[str, str]) -> bytes:
        return "\n".join(json.dumps({"_id": k, "text": v}) for k, v in notes.items()).encode()

    old = {f"n{i}": f"Note {i} holds version old of basalt column {i} and its joints." for i in range(12)}
    system.put("bulk/notes.jsonl", body(old))
    system.drain()
    new = dict(old)
    for i in (1, 3, 6, 7, 9):
        new[f"n{i}"] = f"Note {i} holds version new of basalt column {i} and its joints."
    system.put("bulk/notes.jsonl", body(new))
    both_stored = []
    wrong: list[str] = []

    def look(name: str) -> None:
        if name not in ("ddb.update_item", "store.upsert", "store.retire", "store.delete_chunks"):
            return
        _, texts = system.shards.searchable(system.snapshot())
        stored = _texts(system)
        for i in range(12):
            versions = {v for v in ("old", "new") if any(f"Note {i} holds version {v} " in t for t in texts)}
            if len(versions) != 1:
                wrong.append(f"before {name}: note {i} seen as {sorted(versions)}")
            both_stored.append(all(any(f"Note {i} holds version {v} " in t for t in stored) for v in ("old", "new")))

    with system.plan.watching(look):
        system.drain()
    assert not wrong, wrong[:5]
    assert any(both_stored)  # the store held both versions of some note at some moment: the snapshot hid one
    _, texts = system.shards.searchable(system.snapshot())
    assert all(any(text in t for t in texts) for text in new.values())
    _assert_true_to_the_bucket(system)


def test_a_query_that_read_its_snapshot_before_a_commit_still_finds_the_old_rows_until_the_grace_ends(
    make: Any,
) -> None:
    # A query reads its snapshot at Embed and searches the shards after: the rows an overwrite retired must still
    # be there for it, so they are deleted by a message delayed by retire_grace_s, which the service refuses to
    # act on before the grace ends.
    system = make(IngestionSettings(**{**SETTINGS.model_dump(), "retire_grace_s": 60}))
    old = _large_text(40, "old")
    system.put("geology/basalt.txt", old)
    system.drain()
    paragraphs = old.decode().split("\n\n")
    paragraphs[12] = "Paragraph 12 was rewritten about pentagonal joints."
    before = system.snapshot()  # a query in flight across the commit
    system.put("geology/basalt.txt", "\n\n".join(paragraphs).encode())
    assert system.deliver(0) == "ok"
    [(_, sweep)] = system.queue  # the delayed deletion of the retired rows
    assert '"retired": ' in sweep
    _, texts = system.shards.searchable(before)
    assert "Paragraph 12 old:" in "\n".join(texts) and "pentagonal" not in "\n".join(texts)
    _, texts = system.shards.searchable(system.snapshot())
    assert "Paragraph 12 old:" not in "\n".join(texts) and "pentagonal" in "\n".join(texts)
    assert system.deliver(0) == "retry"  # due only once the grace has passed
    assert "Paragraph 12 old:" in "\n".join(_texts(system))
    system.clock.now += 61
    assert system.deliver(0) == "ok" and not system.queue
    assert "Paragraph 12 old:" not in "\n".join(_texts(system))
    _assert_true_to_the_bucket(system)


def test_a_redelivery_while_the_first_delivery_still_works_is_not_the_leases_owner(make: Any) -> None:
    # SQS keeps a message's id across deliveries: an owner token made of it alone let a redelivery (visibility
    # timeout shorter than the work) pass as the running worker and write beside it.
    system = make()
    event = system.put("notes/a.txt", b"One document.")
    owners: list[str] = []
    original_run = system.service.run

    def record(e: Any, *, owner: str, **kwargs: Any) -> Any:
        owners.append(owner)
        return original_run(e, owner=owner, **kwargs)

    system.service.run = record  # type: ignore[method-assign]
    system.deliver(0, keep=True)
    system.deliver(0)
    assert len(owners) == 2 and owners[0] != owners[1]
    assert event.sequencer


# -- large objects: no invocation comes near the Lambda timeout ----------------------------------------------------
@pytest.mark.parametrize("key", ["geology/basalt.txt", "bulk/lines.jsonl"])
def test_a_large_object_is_handed_on_between_invocations_and_ends_complete(make: Any, key: str) -> None:
    system = make(IngestionSettings(**{**SETTINGS.model_dump(), "jsonl_batch_documents": 20}))
    # Every invocation believes it has 100 s left and takes 40 s per part: after one part, two more would not
    # leave the 30 s margin, so it records its progress and queues the rest.
    ticks = iter(range(1_000_000))

    class Slow:
        aws_request_id = "r"
        function_name = "ingest"
        memory_limit_in_mb = 3008
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ingest"
        function_version = "$LATEST"

        def get_remaining_time_in_millis(self) -> int:
            return 100_000

    system.context = Slow  # type: ignore[method-assign]
    monotonic = {"now": 0.0}

    def fake_monotonic() -> float:
        monotonic["now"] += 20.0  # each call: 20 s later (two calls per part: 40 s a part)
        next(ticks)
        return monotonic["now"]

    import shardrag.ingestion.service as service_module

    original = service_module.time.monotonic
    service_module.time.monotonic = fake_monotonic  # type: ignore[attr-defined]
    try:
        if key.endswith(".jsonl"):
            lines = [json.dumps({"_id": f"n{i}", "text": f"Line {i} about basalt columns."}) for i in range(100)]
            body = "\n".join(lines).encode()
        else:
            body = _large_text()
        system.put(key, body)
        outcomes = []
        for _ in range(50):
            if not system.queue:
                break
            outcomes.append(system.deliver(0))
    finally:
        service_module.time.monotonic = original  # type: ignore[attr-defined]
    source = system.service.registry.get_source(f"{system.bucket}/{key}")
    assert source is not None and source.status == "indexed"
    assert len(outcomes) >= 4 and set(outcomes) == {"ok"}  # one part per invocation, each acknowledged
    _assert_true_to_the_bucket(system)
