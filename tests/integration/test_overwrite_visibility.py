"""What a reader sees while an overwrite is being written, explored with hypothesis on real Milvus Lite shards
through the real ingest handler: random edits (paragraphs replaced, inserted, deleted) of a document cut into
lexical units, with every store write and every epoch-clock update a moment at which a query starts.

At every moment, a query (the rows its snapshot sees: ``shardrag.visibility``) finds exactly one version of the
document, by text (dense side) and by each paragraph's unique word (BM25 side: some row's weights hold it): the
old one, then from one moment on the new one, never a mix and never a gap. At the end the index is what a clean
ingest of the new version gives, and the term statistics equal a recount."""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from shardrag.bm25 import Tokenizer, term_id
from shardrag.config import IngestionSettings
from shardrag.records import Snapshot

from .ingest_harness import FaultPlan, IngestSystem, MilvusShards

pytestmark = pytest.mark.integration
SHARDS = 4
# Small parts and write batches: many moments per overwrite, several parts per document.
SETTINGS = IngestionSettings(
    chunk_size=32, chunk_overlap=8, part_bytes=4096, lease_s=60, write_batch_chunks=4, retire_grace_s=60
)
KEY = "geology/basalt.txt"
EXAMPLES = int(os.environ.get("SHARDRAG_VISIBILITY_EXAMPLES", "12"))


def _word(prefix: str, n: int) -> str:
    """A unique word the tokenizer keeps as it is (letters only: the stemmer leaves ``zq…`` alone)."""
    letters = string.ascii_lowercase
    return prefix + letters[n // 26 % 26] + letters[n % 26] + letters[n // 676 % 26]


def _paragraph(word: str, n: int) -> str:
    return f"Paragraph {word} tells how column {n} cooled slowly into hexagonal joints near the grey sea cliffs."


edits = st.lists(
    st.tuples(st.sampled_from(["replace", "insert", "delete"]), st.floats(min_value=0, max_value=0.999)),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusShards]:
    opened = MilvusShards(tmp_path_factory.mktemp("visibility-shards"), SHARDS)
    yield opened
    opened.close()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(count=st.integers(min_value=40, max_value=110), script=edits)
def test_a_query_sees_the_old_version_whole_then_the_new_one_whole(
    shards: MilvusShards, tmp_path: Path, count: int, script: list[tuple[str, float]]
) -> None:
    old = [(_word("zq", i), i) for i in range(count)]
    new = list(old)
    added = 0
    for op, where in script:
        at = int(where * (len(new) + (op == "insert")))
        if op == "delete" and len(new) > 1:
            del new[min(at, len(new) - 1)]
        elif op == "replace":
            new[min(at, len(new) - 1)] = (_word("nq", added), 1000 + added)
            added += 1
        elif op == "insert":
            new.insert(at, (_word("nq", added), 1000 + added))
            added += 1
    body = {
        name: "\n\n".join(_paragraph(w, n) for w, n in version).encode()
        for name, version in (("old", old), ("new", new))
    }
    kept_words = {w for w, _ in old} & {w for w, _ in new}
    removed = {w for w, _ in old} - kept_words
    tokenizer = Tokenizer()
    term = {w: term_id(tokenizer.terms(w)[0]) for w, _ in old + new}

    shards.clear()
    with mock_aws(), IngestSystem(shards, tmp_path, SETTINGS, plan=FaultPlan()) as system:
        system.put(KEY, body["old"])
        system.drain()
        terms, _ = system.shards.searchable()
        assert all(term[w] in terms for w, _ in old)

        old_words, new_words = {w for w, _ in old}, {w for w, _ in new}
        every = sorted(old_words | new_words)
        seen: list[str] = []
        wrong: list[str] = []
        # A query that read its snapshot before the upload and searches at any later moment (within the grace).
        in_flight = system.snapshot()

        def version(snapshot: Snapshot) -> tuple[str, str]:
            terms, texts = system.shards.searchable(snapshot)
            joined = "\n".join(texts)
            by_text = {w for w in every if f"Paragraph {w} " in joined}
            by_word = {w for w in every if term[w] in terms}
            found = "old" if by_text == by_word == old_words else "new" if by_text == by_word == new_words else ""
            return found, f"text {sorted(by_text ^ old_words)}, words {sorted(by_word ^ old_words)}"

        def look(name: str) -> None:
            # Only writes change what a reader sees: the index before each write is every state it passes through.
            if name not in ("store.upsert", "store.delete_chunks", "store.retire", "ddb.update_item"):
                return
            now, diff = version(system.snapshot())
            if not now or (now == "old" and "new" in seen and old_words != new_words):
                wrong.append(f"before {name}: {diff}")
            seen.append(now)
            if version(in_flight)[0] != "old":
                wrong.append(f"before {name}: the query in flight lost the old version: {version(in_flight)[1]}")

        with system.plan.watching(look, before=True):
            system.put(KEY, body["new"])
            system.drain()

        assert not wrong, wrong[:5]
        assert seen and seen[0] == "old"
        terms, texts = system.shards.searchable()
        assert not any(term[w] in terms or any(f"Paragraph {w} " in t for t in texts) for w in removed)
        assert all(term[w] in terms for w, _ in new)
        assert system.shards.rows() == system.reference_rows()
        for table in system.recount():
            assert table["kept"] == table["recount"], table
