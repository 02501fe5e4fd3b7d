"""Embedding reuse on real Milvus Lite shards with the BM25 term accounting on, through the real ingest handler:
an overwrite with one paragraph edited embeds only the changed chunks, and leaves the index exactly what a fresh
ingest of the edited object gives (every row's text, dense vector and sparse vector), the term statistics equal
to a recount, with or without a failure in the middle of the overwrite."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from shardrag.config import IngestionSettings

from .ingest_harness import FaultPlan, IngestSystem, MilvusShards

pytestmark = pytest.mark.integration
SHARDS = 4
SETTINGS = IngestionSettings(chunk_size=32, chunk_overlap=8, part_bytes=4096, lease_s=60)
KEY = "geology/basalt.txt"


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MilvusShards, MilvusShards]]:
    root = tmp_path_factory.mktemp("reuse-shards")
    opened = MilvusShards(root / "overwritten", SHARDS), MilvusShards(root / "fresh", SHARDS)
    yield opened
    for shards in opened:
        shards.close()


def _paragraphs(edit: str = "") -> bytes:
    paragraphs = [
        f"Paragraph {i}: the basalt column number {i} cooled slowly into hexagonal joints near the sea, "
        f"{'and the lava front stalled' if i % 3 else 'while the tide rose'} over {i % 11} days."
        for i in range(150)
    ]
    if edit:
        paragraphs[75] = edit
    return "\n\n".join(paragraphs).encode()


def _index(shards: MilvusShards) -> dict[int, tuple[Any, ...]]:
    """Every stored row, by position: text, shard, dense vector and sparse vector exactly as stored (not the
    row id, which covers the object's URI: each system here has its own bucket)."""
    return {
        c.chunk.position: (
            c.chunk.text,
            shard,
            tuple(c.vector),
            tuple(c.sparse.indices) if c.sparse else (),
            tuple(c.sparse.values) if c.sparse else (),
        )
        for shard, store in enumerate(shards.milvus)
        for batch in store.scan()
        for c in batch
    }


def _row_count(shards: MilvusShards) -> int:
    return sum(len(batch) for store in shards.milvus for batch in store.scan())


def _counting(system: IngestSystem) -> list[str]:
    seen: list[str] = []
    embed = system.embedder.embed

    def counted(texts: Sequence[str]) -> Any:
        seen.extend(texts)
        return embed(texts)

    system.embedder.embed = counted  # type: ignore[method-assign]
    return seen


def _counting_rows(shards: MilvusShards) -> list[str]:
    """Ids of the rows upserted into ``shards`` from now on."""
    written: list[str] = []
    for store in shards.milvus:

        def upsert(chunks: Sequence[Any], _inner: Any = store.upsert) -> int:
            written.extend(c.chunk.chunk_id for c in chunks)
            return int(_inner(chunks))

        store.upsert = upsert  # type: ignore[method-assign]
    return written


def _fresh_ingest(shards: MilvusShards, tmp_path: Path, body: bytes) -> dict[int, tuple[Any, ...]]:
    shards.clear()
    with IngestSystem(shards, tmp_path, SETTINGS, plan=FaultPlan()) as fresh:
        fresh.put(KEY, body)
        fresh.drain()
        index = _index(shards)
    return index


@pytest.mark.parametrize(
    "fault",
    [
        "none",
        "transient@upsert",
        "crash@upsert",
        "transient@stored_chunks",
        "crash@row_epochs#2",  # the commit's read, after the edited row is written
        "crash@retire",  # old rows being stamped retired, before the commit
        "crash@delete_chunks",  # the retired rows' deletion, after the commit
    ],
)
def test_an_overwrite_with_one_edited_paragraph_reembeds_only_it_and_equals_a_fresh_ingest(
    shard_sets: tuple[MilvusShards, MilvusShards], tmp_path: Path, fault: str
) -> None:
    overwritten, fresh = shard_sets
    edited = _paragraphs(edit="Paragraph 75 was rewritten: the columns here are pentagonal, a rare case.")
    with mock_aws():
        expected = _fresh_ingest(fresh, tmp_path / "fresh", edited)
        overwritten.clear()
        _overwrite(overwritten, tmp_path, edited, fault, expected)


def _overwrite(
    overwritten: MilvusShards, tmp_path: Path, edited: bytes, fault: str, expected: dict[int, tuple[Any, ...]]
) -> None:
    with IngestSystem(overwritten, tmp_path, SETTINGS, plan=FaultPlan()) as system:
        seen = _counting(system)
        system.put(KEY, _paragraphs())
        system.drain()
        first = len(seen)
        assert first == len(_index(overwritten)) > 60  # five parts of 4 KiB, every chunk embedded once
        seen.clear()
        rows_written = _counting_rows(overwritten)
        system.put(KEY, edited)
        if fault != "none":
            kind, where = fault.split("@")
            where, _, nth = where.partition("#")
            system.plan.arm(int(nth or 1), kind, only=f"store.{where}")
            assert system.deliver() == ("retry" if kind == "transient" else "crash")
        system.drain()
        # Only the chunks the edit touched were embedded (a retry may embed them once more).
        assert 0 < len(seen) <= 6
        assert any("pentagonal" in text for text in seen)
        # ... and only their rows were written: every other row stayed as it was (a retry may write one again).
        assert 0 < len(set(rows_written)) <= 3
        assert _index(overwritten) == expected and _row_count(overwritten) == len(expected)
        assert system.shards.rows() == system.reference_rows()
        for table in system.recount():
            assert table["kept"] == table["recount"], table
