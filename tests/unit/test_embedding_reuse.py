"""Embedding reuse on re-ingest: edit-local chunking, the vector pool, the indexer taking earlier vectors, and the
ingest service deciding when it may (same model, registry-recorded version)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

import boto3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws
from shardrag.chunking import Chunker, Document, word_spans
from shardrag.config import IngestionSettings
from shardrag.embedding.base import Matrix
from shardrag.embedding.hashing import HashingEmbedder
from shardrag.embedding.reuse import VectorPool, embed_reusing, text_key
from shardrag.identity import object_doc_id
from shardrag.indexing import DocumentIndexer, MeanLength, Reusable
from shardrag.ingestion import DynamoDbRegistry, IngestService, ObjectEvent, S3ObjectSource, table_definition
from shardrag.ingestion.events import normalise_sequencer
from shardrag.store.memory import InMemoryVectorStore

WORDS = [
    "granite",
    "harbor",
    "meadow",
    "lantern",
    "copper",
    "violet",
    "thunder",
    "orchard",
    "pepper",
    "falcon",
    "willow",
    "ember",
    "river",
    "stone",
]


class CountingEmbedder:
    """The hashing embedder, recording every text it is asked to embed."""

    def __init__(self, dimension: int = 64, model_id: str | None = None) -> None:
        self._inner = HashingEmbedder(dimension)
        self.model_id = model_id or self._inner.model_id
        self.seen: list[str] = []

    @property
    def dimension(self) -> int:
        return self._inner.dimension

    def embed(self, texts: Sequence[str]) -> Matrix:
        self.seen.extend(texts)
        return self._inner.embed(texts)

    def count_tokens(self, text: str) -> int:
        return self._inner.count_tokens(text)


def _paragraphs(seed: int, count: int, mean_words: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=int(rng.integers(max(1, mean_words // 2), mean_words * 3 // 2 + 2)))) + f" p{i}"
        for i in range(count)
    ]


# -- chunking: an edit changes only the chunks around it --------------------------------------------------------
@pytest.mark.parametrize("mean_words", [6, 30, 95, 300])
def test_one_edited_paragraph_changes_at_most_a_few_chunks(mean_words: int) -> None:
    chunker = Chunker(size=128, overlap=32, token_spans=word_spans)
    paragraphs = _paragraphs(mean_words, 500, mean_words)
    before = [c.text for c in chunker.run(Document(doc_id="d", text="\n\n".join(paragraphs)))]
    paragraphs[250] = "The edited paragraph now mentions Newmark instead, in a few more words than it did."
    after = [c.text for c in chunker.run(Document(doc_id="d", text="\n\n".join(paragraphs)))]
    # A sliding window over the whole text would change every chunk after the edit (about half of them, here
    # 20 to 600); packed paragraphs re-pack up to the next anchor (about every 256 tokens).
    assert len(set(after) - set(before)) <= 6
    assert len(set(before) - set(after)) <= 6 + mean_words // 64


def _window_units(chunker: Chunker, text: str) -> list[tuple[int, str]]:
    """(index of the unit each window starts in, window text) for ``text``."""
    document = Document(doc_id="d", text=text)
    spans = word_spans(text)
    units = chunker._units(document, spans)
    starts = [start for start, _ in units]
    return [
        (bisect.bisect_right(starts, first) - 1, text[spans[first][0] : spans[last][1]].strip())
        for first, last in chunker._windows(text, spans, units)
    ]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 90), min_size=3, max_size=60),
    where=st.integers(0, 10_000),
    new_size=st.integers(1, 90),
)
def test_windows_before_the_edit_and_after_the_next_anchor_are_unchanged(
    sizes: list[int], where: int, new_size: int
) -> None:
    chunker = Chunker(size=24, overlap=6, token_spans=word_spans)
    words = itertools.cycle(WORDS)
    paragraphs = [" ".join(next(words) for _ in range(n)) + f" p{i}" for i, n in enumerate(sizes)]
    k = where % len(paragraphs)
    edited = [*paragraphs[:k], "edited " + " ".join(["zeta"] * new_size), *paragraphs[k + 1 :]]
    before = _window_units(chunker, "\n\n".join(paragraphs))
    after = _window_units(chunker, "\n\n".join(edited))
    # Before the edited unit, nothing moved.
    assert [w for w in before if w[0] < k][:-1] == [w for w in after if w[0] < k][:-1]
    # From the first unit after the edit that always opens a window (an anchor or a unit longer than the window),
    # every window is the same.
    text = "\n\n".join(edited)
    document = Document(doc_id="d", text=text)
    spans = word_spans(text)
    units = chunker._units(document, spans)
    resets = [i for i, (s, e) in enumerate(units) if i > k and (e - s > 24 or chunker._is_anchor(text, spans, s, e))]
    if resets:
        assert [w for w in before if w[0] >= resets[0]] == [w for w in after if w[0] >= resets[0]]


def test_anchors_depend_on_the_unit_alone() -> None:
    chunker = Chunker(size=32, overlap=8, token_spans=word_spans)
    text = "alpha beta gamma delta epsilon"
    spans = word_spans(text)
    decision = chunker._is_anchor(text, spans, 0, len(spans))
    wrapped = "something else entirely\n\n" + text + "\n\nand after"
    wrapped_spans = word_spans(wrapped)
    first = next(i for i, (a, _) in enumerate(wrapped_spans) if wrapped[a:].startswith("alpha"))
    assert chunker._is_anchor(wrapped, wrapped_spans, first, first + len(spans)) == decision


# -- the pool ---------------------------------------------------------------------------------------------------
def test_the_pool_keys_on_model_dimension_and_exact_text() -> None:
    pool = VectorPool("model-a", 3)
    pool.add("Title\nsome text", [1.0, 0.0, 0.0])
    found = pool.get("Title\nsome text")
    assert found is not None and found.dtype == np.float32 and found.tolist() == [1.0, 0.0, 0.0]
    assert pool.get("Title\nsome text ") is None and pool.get("title\nsome text") is None
    assert text_key("model-a", 3, "x") != text_key("model-b", 3, "x") != text_key("model-a", 4, "x")
    pool.add("wrong width", [1.0, 0.0])
    assert pool.get("wrong width") is None
    with pytest.raises(ValueError, match="model's id"):
        VectorPool("", 3)


def test_embed_reusing_runs_the_model_on_the_misses_only() -> None:
    embedder = CountingEmbedder(8)
    pool = VectorPool(embedder.model_id, 8)
    known = embedder._inner.embed(["a known text"])[0]
    pool.add("a known text", [float(x) for x in known])
    result = embed_reusing(embedder, ["new one", "a known text", "new two"], [pool])
    assert embedder.seen == ["new one", "new two"]
    assert result.computed == [True, False, True] and (result.embedded, result.reused) == (2, 1)
    np.testing.assert_array_equal(result.vectors, embedder._inner.embed(["new one", "a known text", "new two"]))


# -- the indexer ------------------------------------------------------------------------------------------------
def _indexer(embedder: CountingEmbedder, stores: list[InMemoryVectorStore], *, model_id: str = "") -> DocumentIndexer:
    return DocumentIndexer(
        chunker=Chunker(size=32, overlap=8, token_spans=word_spans),
        embedder=embedder,
        store_for=stores.__getitem__,
        shard_count=len(stores),
        model_id=model_id,
    )


def test_the_indexer_reuses_the_earlier_versions_vectors_for_unchanged_chunks() -> None:
    embedder = CountingEmbedder()
    stores = [InMemoryVectorStore(shard=i, dimension=embedder.dimension) for i in range(2)]
    indexer = _indexer(embedder, stores, model_id=embedder.model_id)
    paragraphs = _paragraphs(7, 60, 20)
    [v1] = indexer.run([Document(doc_id="d", title="T", text="\n\n".join(paragraphs), version="v1")])
    assert (v1.embedded, v1.reused) == (v1.chunks, 0)
    paragraphs[30] = "An edited paragraph about the harbor lantern."
    embedder.seen.clear()
    reuse = {"d": Reusable(shards=v1.shards)}
    [v2] = indexer.run([Document(doc_id="d", title="T", text="\n\n".join(paragraphs), version="v2")], reuse=reuse)
    assert v2.embedded == len(embedder.seen) <= 2 and v2.reused == v2.chunks - v2.embedded > 0.9 * v2.chunks
    assert v2.kept == 0  # not told what is stored: every row written again
    assert any("edited paragraph" in text for text in embedder.seen)
    # What was written is what a fresh embedding of v2 gives, and v1 is gone.
    [stored] = [s for s in stores if s.count()]
    rows = stored.stored_chunks("d")
    assert {r.chunk.chunk_id for r in rows} == set(v2.ids)
    chunker = Chunker(size=32, overlap=8, token_spans=word_spans)
    fresh = embedder._inner.embed([chunker.embedding_text(r.chunk) for r in rows])
    np.testing.assert_allclose(np.asarray([r.vector for r in rows]), fresh, atol=1e-6)


def test_the_indexer_reuses_nothing_without_a_model_id_or_of_another_version() -> None:
    embedder = CountingEmbedder()
    stores = [InMemoryVectorStore(shard=0, dimension=embedder.dimension)]
    text = "\n\n".join(_paragraphs(3, 20, 20))
    [v1] = _indexer(embedder, stores, model_id=embedder.model_id).run([Document(doc_id="d", text=text, version="v1")])
    for indexer in (_indexer(embedder, stores), _indexer(embedder, stores, model_id="m")):
        embedder.seen.clear()
        [result] = indexer.run([Document(doc_id="d", text=text, version="v2")], reuse={"d": Reusable(shards=[0])})
        assert result.reused == 0 and result.embedded == len(embedder.seen) == v1.chunks


def test_the_indexer_keeps_rows_stored_exactly_as_it_would_write_them() -> None:
    embedder = CountingEmbedder()
    stores = [InMemoryVectorStore(shard=i, dimension=embedder.dimension) for i in range(2)]
    indexer = _indexer(embedder, stores, model_id=embedder.model_id)
    paragraphs = _paragraphs(5, 60, 20)
    mean = MeanLength()
    [v1] = indexer.run([Document(doc_id="d", text="\n\n".join(paragraphs), version="v1")], mean=mean)
    # One word replaced: the paragraph keeps its length, so no chunk after it moves.
    paragraphs[30] = " ".join(["edited", *paragraphs[30].split()[1:]])
    stored = {"d": {cid: [i] for i, store in enumerate(stores) for cid in store.chunk_ids("d")}}
    embedder.seen.clear()
    before = {cid: (c, v.tolist()) for store in stores for cid, (c, v) in store._rows.items()}
    [v2] = indexer.run(
        [Document(doc_id="d", text="\n\n".join(paragraphs), version="v2")],
        stored=stored,
        reuse={"d": Reusable(shards=v1.shards)},
        mean=MeanLength(mean.value),
    )
    # Only the rows the edit changed were written; the others are the very rows stored before.
    assert 0 < v2.embedded == len(embedder.seen) <= 2 and v2.kept > 0.9 * v2.chunks
    assert sum(len(ids) for ids in v2.written.values()) == v2.chunks - v2.kept
    after = {cid: (c, v.tolist()) for store in stores for cid, (c, v) in store._rows.items()}
    assert {cid: after[cid] for cid in v2.ids if cid in before} == {cid: before[cid] for cid in v2.ids if cid in before}
    assert set(after) == set(v2.ids)  # swept: nothing of v1 that v2 does not have
    # And the index is what a fresh ingest of v2 into empty stores gives, id for id.
    fresh_stores = [InMemoryVectorStore(shard=i, dimension=embedder.dimension) for i in range(2)]
    [fresh] = _indexer(CountingEmbedder(), fresh_stores, model_id=embedder.model_id).run(
        [Document(doc_id="d", text="\n\n".join(paragraphs), version="v2")], mean=MeanLength(mean.value)
    )
    assert fresh.ids == v2.ids


# -- the service ------------------------------------------------------------------------------------------------
class _World:
    def __init__(self, embedder: CountingEmbedder, indexer_model: str) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket="docs")
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**table_definition("registry"))
        self.stores = [InMemoryVectorStore(shard=i, dimension=embedder.dimension) for i in range(3)]
        self.settings = IngestionSettings(chunk_size=32, chunk_overlap=8, part_bytes=4096)
        self.changes = 0
        self.service = self._service(embedder, indexer_model, ddb)
        self._seq = itertools.count(1)

    def _service(self, embedder: CountingEmbedder, model: str, ddb: Any) -> IngestService:
        indexer = DocumentIndexer(
            chunker=Chunker(size=32, overlap=8, token_spans=word_spans),
            embedder=embedder,
            store_for=self.stores.__getitem__,
            shard_count=3,
            model_id=model,
        )

        def changed() -> None:
            self.changes += 1

        return IngestService(
            self.settings,
            indexer=indexer,
            stores=self.stores.__getitem__,
            shard_count=3,
            registry=DynamoDbRegistry(ddb, "registry"),
            objects=S3ObjectSource(self.s3),
            on_change=changed,
        )

    def put(self, key: str, body: bytes) -> Any:
        etag = self.s3.put_object(Bucket="docs", Key=key, Body=body)["ETag"].strip('"')
        event = ObjectEvent(
            kind="created",
            bucket="docs",
            key=key,
            etag=etag,
            size=len(body),
            sequencer=normalise_sequencer(f"{next(self._seq):x}"),
        )
        return self.service.run(event, owner="test")


@pytest.fixture
def aws() -> Any:
    with mock_aws():
        yield


def test_an_overwrite_with_one_paragraph_edited_embeds_only_the_changed_chunks(aws: Any) -> None:
    embedder = CountingEmbedder()
    world = _World(embedder, embedder.model_id)
    paragraphs = _paragraphs(11, 400, 25)  # several parts of 4 KiB
    first = world.put("notes/long.txt", "\n\n".join(paragraphs).encode())
    assert first.action == "indexed" and first.embedded == first.chunks > 100 and first.reused == 0
    paragraphs[200] = "This paragraph was edited: the falcon now nests by the river."
    embedder.seen.clear()
    second = world.put("notes/long.txt", "\n\n".join(paragraphs).encode())
    assert second.action == "indexed" and second.embedded == len(embedder.seen) <= 3
    # The chunks before the edit keep their rows; after it, the edit moved them by a position (a shorter
    # paragraph packs with its neighbour): rewritten, each with its earlier vector.
    assert second.kept + second.reused == second.chunks - second.embedded and second.kept > 0.4 * second.chunks
    # Only the new version is stored, complete.
    doc_id = object_doc_id("default", "notes/long.txt")
    rows = [r for s in world.stores for r in s.stored_chunks(doc_id)]
    assert len(rows) == second.chunks and {r.chunk.position for r in rows} == set(range(second.chunks))
    # An edit that moves nothing leaves every other row where it is, not even rewritten.
    paragraphs[300] = " ".join(["edited", *paragraphs[300].split()[1:]])
    embedder.seen.clear()
    third = world.put("notes/long.txt", "\n\n".join(paragraphs).encode())
    assert third.embedded == len(embedder.seen) == 1 and third.kept == third.chunks - 1 and third.reused == 0
    [state] = world.service.registry.documents_of("docs/notes/long.txt")
    assert state.model == embedder.model_id and state.status == "indexed"
    # The index version moved before and after each of the two ingests (and at each finish).
    assert world.changes >= 4


def test_a_different_model_never_reuses_the_earlier_vectors(aws: Any) -> None:
    embedder = CountingEmbedder()
    world = _World(embedder, "model-one")
    paragraphs = _paragraphs(5, 50, 20)
    world.put("a.txt", "\n\n".join(paragraphs).encode())
    paragraphs[10] = "edited"
    world.service = world._service(embedder, "model-two", boto3.client("dynamodb", region_name="us-east-1"))
    second = world.put("a.txt", "\n\n".join(paragraphs).encode())
    assert second.reused == 0 and second.embedded == second.chunks
