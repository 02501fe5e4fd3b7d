"""Lexical units: a chunk's BM25 side computed over its document (or a run of its chunks), each unit counted once
in the term statistics, exactly under any sequence of writes, overwrites and deletes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shardrag.artifacts import FileArtifactStore
from shardrag.bm25 import (
    EMPTY_MARKER,
    LENGTH_ID,
    SHARED_ROW,
    SHARED_UNIT,
    Bm25Encoder,
    CorpusStats,
    Tokenizer,
    counts_unit,
    grid_mean,
    measured_avgdl,
)
from shardrag.bm25 import stored_length as length_of
from shardrag.chunking import Chunker, Document
from shardrag.indexing import DocumentIndexer
from shardrag.lexical_units import LexicalUnit, lexical_units
from shardrag.records import EmbeddedChunk, SparseVector
from shardrag.store.accounting import TermAccountingStore
from shardrag.store.memory import InMemoryVectorStore
from shardrag.term_stats import TermStatsStore, TermStatsTracker, rebuild_term_stats, stats_name

CHUNKER = Chunker(size=16, overlap=4)
TOKENIZER = Tokenizer()
WORDS = ["moon", "tide", "ocean", "gravity", "sun", "orbit", "plant", "light", "energy", "shoe", "run", "wave"]


def _units(document: Document, window: int) -> list[LexicalUnit]:
    return lexical_units(
        document,
        CHUNKER.run(document),
        window=window,
        tokenizer=TOKENIZER,
        embedding_text=CHUNKER.embedding_text,
    )


def _paragraphs(seed: int, count: int) -> str:
    return "\n\n".join(
        " ".join(WORDS[(seed * 7 + p * 5 + w * 3) % len(WORDS)] for w in range(6 + (seed + p) % 9))
        for p in range(count)
    )


def test_window_zero_keeps_one_unit_per_chunk_indexed_as_embedded() -> None:
    document = Document(doc_id="d", title="Tides", text=_paragraphs(1, 8))
    chunks = CHUNKER.run(document)
    units = _units(document, 0)
    assert [u.chunks for u in units] == [[i] for i in range(len(chunks))]
    assert [u.text for u in units] == [CHUNKER.embedding_text(c) for c in chunks]


def test_a_document_within_the_window_is_one_unit_scored_as_a_whole() -> None:
    document = Document(doc_id="d", title="Tides", text=_paragraphs(2, 6))
    chunks = CHUNKER.run(document)
    assert len(chunks) > 2
    [unit] = _units(document, 1024)
    assert unit.chunks == list(range(len(chunks)))
    assert unit.text == f"Tides\n{document.text}"
    # The first chunk stores the whole document's weights, so its score is the document's BM25 score; the others
    # store the marker alone (no term: they never score, and count nothing).
    encoder = Bm25Encoder(k1=1.2, b=0.75, avgdl=40.0)
    vectors = encoder.units([unit.text], [len(unit.chunks)])
    whole = encoder.document(unit.text)
    assert vectors[0] == whole
    assert all(v == SHARED_ROW and v.values == [SHARED_UNIT] for v in vectors[1:])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 1000), paragraphs=st.integers(1, 40), window=st.integers(1, 120))
def test_units_partition_the_chunks_in_order_within_the_window(seed: int, paragraphs: int, window: int) -> None:
    document = Document(doc_id="d", title="T", text=_paragraphs(seed, paragraphs))
    chunks = CHUNKER.run(document)
    units = _units(document, window)
    assert [i for u in units for i in u.chunks] == list(range(len(chunks)))
    whole = f"T\n{document.text}"
    if len(TOKENIZER.terms(whole)) <= window:
        assert [u.text for u in units] == [whole]
        return
    for unit in units:
        if len(unit.chunks) > 1:
            assert sum(len(TOKENIZER.terms(chunks[i].text)) for i in unit.chunks) <= window
            # The document's own text from the first chunk to the last: overlaps are counted once.
            body = unit.text.removeprefix("T\n")
            assert body in document.text and body.startswith(chunks[unit.chunks[0]].text)
            assert body.endswith(chunks[unit.chunks[-1]].text)
        else:
            assert unit.text == CHUNKER.embedding_text(chunks[unit.chunks[0]])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), paragraphs=st.integers(8, 40), edited=st.data())
def test_an_edit_leaves_the_units_before_it_alone(seed: int, paragraphs: int, edited: st.DataObject) -> None:
    """Units are packed left to right, so only the last two units before an edit may see it (the chunk before an
    edited paragraph, and whether the next chunk still fits); every earlier unit, and its rows, stays as it was."""
    text = _paragraphs(seed, paragraphs)
    parts = text.split("\n\n")
    at = edited.draw(st.integers(0, len(parts) - 1))
    edit_starts = len("\n\n".join(parts[:at]))
    parts[at] = parts[at] + " comet"
    before = _units(Document(doc_id="d", text=text), 40)
    after = _units(Document(doc_id="d", text="\n\n".join(parts)), 40)
    ahead, cursor = [], 0
    for unit in before:  # the paragraphs repeat: find each unit after the one before it
        cursor = text.index(unit.text, cursor)
        if cursor + len(unit.text) <= edit_starts:
            ahead.append(unit)
    assert after[: max(0, len(ahead) - 2)] == ahead[:-2]


def test_only_the_first_row_of_a_unit_counts_it() -> None:
    encoder = Bm25Encoder(k1=1.2, b=0.75)
    texts = ["moon tide moon", "sun orbit light energy", "the of and"]
    vectors = encoder.units(texts, [3, 1, 2])
    assert len(vectors) == 6
    assert [counts_unit(v) for v in vectors] == [True, False, False, True, True, False]
    assert [length_of(v) for v in vectors] == [3, None, None, 4, 0, None]
    assert vectors[4] == EMPTY_MARKER and vectors[5].indices == [LENGTH_ID]
    stats = CorpusStats()
    stats.count(vectors, +1)
    alone = CorpusStats()
    alone.count(encoder.documents(texts), +1)
    assert stats == alone  # three units: N 3, each term's df counted once per unit, total length 7
    assert stats.documents == 3 and stats.tokens == 7 and stats.measured == 3
    stats.count(vectors[1:3], -1)  # removing shared rows uncounts nothing
    assert stats == alone


def test_a_shared_row_never_reads_as_a_length_or_a_legacy_row() -> None:
    legacy = SparseVector(indices=[5], values=[1.0])
    assert counts_unit(legacy) and length_of(legacy) is None
    for length in (0, 1, 2, 1000):
        assert counts_unit(SparseVector(indices=[LENGTH_ID, 5], values=[float(length), 1.0]))


def _indexer(embedder: Any, store: Any, stats: TermStatsStore, window: int) -> DocumentIndexer:
    return DocumentIndexer(
        chunker=CHUNKER,
        embedder=embedder,
        store_for=lambda shard: store,
        shard_count=1,
        bm25=Bm25Encoder(k1=1.2, b=0.75, window=window),
        corpus_stats=lambda tenant: stats.merged(),
    )


def _recount_over_units(documents: dict[str, str], window: int) -> tuple[int, int]:
    """Units and their total length, computed from the documents alone."""
    units = [u for text in documents.values() for u in _units(Document(doc_id="x", text=text), window) if text]
    return len(units), sum(len(TOKENIZER.terms(u.text)) for u in units)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "put", "delete"]), st.integers(0, 2), st.integers(0, 50), st.integers(1, 9)),
        min_size=1,
        max_size=8,
    ),
    window=st.sampled_from([0, 30, 1024]),
)
def test_indexed_units_keep_the_statistics_exact_through_overwrites_and_deletes(
    hashing_embedder: Any, tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int, int]], window: int
) -> None:
    """Whatever is written, overwritten or deleted, the kept table equals a recount of the stored rows, and counts
    each unit of the stored documents once (N = units, total length = the units' lengths)."""
    stats = TermStatsStore(FileArtifactStore(tmp_path_factory.mktemp("stats")), [stats_name("c", 0)])
    inner = InMemoryVectorStore(dimension=hashing_embedder.dimension)
    store = TermAccountingStore(inner, shard=0, tracker=TermStatsTracker(lambda: stats))
    indexer = _indexer(hashing_embedder, store, stats, window)
    live: dict[str, str] = {}
    for step, (op, doc, seed, paragraphs) in enumerate(ops):
        doc_id = f"d{doc}"
        if op == "delete":
            store.delete_document(doc_id)
            live.pop(doc_id, None)
            continue
        text = _paragraphs(seed, paragraphs)
        indexer.run([Document(doc_id=doc_id, text=text, version=f"v{step}")])
        live[doc_id] = text
    stored = [item for batch in inner.scan() for item in batch]
    recount = CorpusStats()
    recount.count([item.sparse or EMPTY_MARKER for item in stored], +1)
    kept = stats.load(0)
    assert kept == recount
    units, tokens = _recount_over_units(live, window)
    assert (kept.documents, kept.tokens, kept.measured) == (units, tokens, units)


def test_a_units_first_row_carries_it_and_an_edit_rewrites_that_row_and_the_edited_ones(
    hashing_embedder: Any, tmp_path: Any
) -> None:
    stats = TermStatsStore(FileArtifactStore(tmp_path), [stats_name("c", 0)])
    store = InMemoryVectorStore(dimension=hashing_embedder.dimension)
    indexer = _indexer(hashing_embedder, store, stats, 1024)
    document = Document(doc_id="d", title="Tides", text=_paragraphs(3, 6), version="1")
    indexer.run([document])
    rows: list[EmbeddedChunk] = sorted(
        (item for batch in store.scan() for item in batch), key=lambda item: item.chunk.position
    )
    assert len(rows) > 2
    [unit] = _units(document, 1024)
    first = rows[0].sparse
    assert first is not None and length_of(first) == len(TOKENIZER.terms(unit.text))
    # The table is empty (nothing flushed), so the mean is the unit's own length on the grid, as for one document.
    assert first == Bm25Encoder(k1=1.2, b=0.75).documents([unit.text])[0]
    assert all(row.sparse == SHARED_ROW for row in rows[1:])
    # An edit in the last paragraph rewrites the unit's first row (its weights changed; a row id covers the exact
    # sparse bits, ``row_identity``) and the rows whose text changed, and keeps every other row's id.
    edited = document.model_copy(update={"text": document.text + " comet", "version": "2"})
    planned = indexer.plan([edited])
    assert planned.chunks[0].text == rows[0].chunk.text
    assert planned.chunks[0].chunk_id != rows[0].chunk.chunk_id
    changed = [i for i, c in enumerate(planned.chunks) if i >= len(rows) or c.text != rows[i].chunk.text]
    assert changed and 0 not in changed
    kept = {c.chunk_id for i, c in enumerate(planned.chunks) if i and i not in changed}
    assert kept == {r.chunk.chunk_id for i, r in enumerate(rows) if i and i not in changed}
    # The same text planned again gives the same ids: what lets an overwrite keep them.
    assert [c.chunk_id for c in indexer.plan([document]).chunks] == [r.chunk.chunk_id for r in rows]


def test_a_rebuild_recounts_units_once_and_reports_rows(hashing_embedder: Any, tmp_path: Any) -> None:
    kept = TermStatsStore(FileArtifactStore(tmp_path / "kept"), [stats_name("c", 0)])
    inner = InMemoryVectorStore(dimension=hashing_embedder.dimension)
    store = TermAccountingStore(inner, shard=0, tracker=TermStatsTracker(lambda: kept))
    indexer = _indexer(hashing_embedder, store, kept, 1024)
    indexer.run([Document(doc_id=f"d{i}", text=_paragraphs(i, 5), version="1") for i in range(3)])
    rows = inner.count()
    fresh = TermStatsStore(FileArtifactStore(tmp_path / "fresh"), [stats_name("c", 0)])
    assert rebuild_term_stats(lambda shard: inner, fresh) == {0: rows}
    assert fresh.load(0) == kept.load(0) and kept.load(0).documents == 3 < rows


def test_a_batch_on_an_empty_table_is_weighed_by_its_units_mean_not_each_documents_own(
    hashing_embedder: Any, tmp_path: Any
) -> None:
    """With an empty table, weighing each document by its own length would turn length normalisation off for the
    first batch of a bulk load; the batch's units give the mean instead. Without a table: per document."""
    documents = [Document(doc_id=f"d{i}", text=_paragraphs(i, 1 + 3 * i), version="1") for i in range(4)]
    units = [unit for document in documents for unit in _units(document, 1024)]
    encoder = Bm25Encoder(k1=1.2, b=0.75)
    batch_mean = grid_mean(measured_avgdl(None, encoder.lengths([u.text for u in units])))
    stats = TermStatsStore(FileArtifactStore(tmp_path), [stats_name("c", 0)])
    with_table = _indexer(hashing_embedder, InMemoryVectorStore(dimension=8), stats, 1024).plan(documents)
    firsts = [v for v, c in zip(with_table.sparse, with_table.chunks, strict=True) if counts_unit(v)]
    assert firsts == encoder.documents([u.text for u in units], mean=batch_mean)
    alone = DocumentIndexer(
        chunker=CHUNKER,
        embedder=hashing_embedder,
        store_for=lambda shard: InMemoryVectorStore(dimension=8),
        shard_count=1,
        bm25=Bm25Encoder(k1=1.2, b=0.75, window=1024),
    ).plan(documents)
    own = [v for v in alone.sparse if counts_unit(v)]
    assert own == [encoder.documents([u.text])[0] for u in units]  # one unit per document here
    assert own != firsts
