"""One behavioural suite, run against every VectorStore implementation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shardrag.config import IndexSettings, ShardEndpoint
from shardrag.records import Chunk, EmbeddedChunk, SearchRequest, Snapshot, SparseVector
from shardrag.store.base import VectorStore
from shardrag.store.memory import InMemoryVectorStore
from shardrag.store.milvus import MilvusVectorStore

pytestmark = pytest.mark.integration
DIM = 16


@pytest.fixture(params=["memory", "milvus-lite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "memory":
        made: VectorStore = InMemoryVectorStore(shard=3, dimension=DIM)
    else:
        made = MilvusVectorStore(
            ShardEndpoint(uri=str(tmp_path / "shard.db"), collection="contract"),
            shard=3,
            dimension=DIM,
            index=IndexSettings(),
        )
    made.ensure_ready()
    yield made
    made.close()


def _items(doc: str, version: str, n: int, seed: int) -> list[EmbeddedChunk]:
    rng = np.random.default_rng(seed)
    return [
        EmbeddedChunk(
            chunk=Chunk(chunk_id=f"{doc}::{version}::{i}", doc_id=doc, text=f"{doc} {version} {i}", version=version),
            vector=rng.normal(size=DIM).tolist(),
        )
        for i in range(n)
    ]


def test_upsert_is_idempotent_by_chunk_id(store: VectorStore) -> None:
    items = _items("d", "v1", 5, seed=1)
    store.upsert(items)
    store.upsert(items)
    store.flush()
    assert store.count() == 5
    assert sorted(store.chunk_ids("d")) == sorted(i.chunk.chunk_id for i in items)


def test_search_ranks_by_cosine_and_reports_the_shard(store: VectorStore) -> None:
    items = _items("a", "v1", 20, seed=2)
    store.upsert(items)
    store.flush()
    hits = store.search(SearchRequest(vector=items[7].vector, top_k=5))
    assert hits[0].chunk_id == items[7].chunk.chunk_id
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.shard == 3 for h in hits)
    vectors = np.array([i.vector for i in items])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    q = vectors[7]
    expected = [items[i].chunk.chunk_id for i in np.argsort(-(vectors @ q))[:5]]
    assert [h.chunk_id for h in hits] == expected


def test_overwrite_keeps_only_the_new_version(store: VectorStore) -> None:
    store.upsert(_items("d", "v1", 4, seed=3))
    store.upsert(_items("d", "v2", 2, seed=4))
    removed = store.delete_document("d", keep_version="v2")
    store.flush()
    assert removed == 4
    assert sorted(store.chunk_ids("d")) == ["d::v2::0", "d::v2::1"]


def test_delete_document_and_chunks(store: VectorStore) -> None:
    store.upsert(_items("x", "v1", 3, seed=5) + _items("y", "v1", 2, seed=6))
    assert store.delete_document("x") == 3
    store.delete_chunks(["y::v1::0"])
    store.flush()
    assert store.chunk_ids("x") == [] and store.chunk_ids("y") == ["y::v1::1"]


def test_hostile_ids_are_literals(store: VectorStore) -> None:
    hostile = 'q" or doc_id != "'
    store.upsert(_items("safe", "v1", 2, seed=7))
    assert store.chunk_ids(hostile) == []
    assert store.delete_document(hostile) == 0
    store.flush()
    assert store.count() == 2


def test_empty_store_returns_no_hits(store: VectorStore) -> None:
    assert store.search(SearchRequest(vector=[1.0] * DIM, top_k=3)) == []


def test_an_existing_collection_with_another_layout_is_refused(tmp_path: Path) -> None:
    from pymilvus import DataType, MilvusClient
    from shardrag.errors import ConfigurationError

    uri = str(tmp_path / "old.db")
    client = MilvusClient(uri)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index(field_name="dense", index_type="FLAT", metric_type="COSINE")
    client.create_collection("legacy", schema=schema, index_params=index)
    store = MilvusVectorStore(
        ShardEndpoint(uri=uri, collection="legacy"), shard=0, dimension=DIM, index=IndexSettings()
    )
    with pytest.raises(ConfigurationError, match="reindex"):
        store.ensure_ready()


def test_an_existing_collection_with_a_cosine_dense_index_is_refused(tmp_path: Path) -> None:
    """The same fields but the earlier release's COSINE index: searching it with IP would fail on every query."""
    from pymilvus import MilvusClient
    from shardrag.errors import ConfigurationError
    from shardrag.store.schema import DENSE_FIELD, SPARSE_FIELD, build_schema

    uri = str(tmp_path / "cosine.db")
    client = MilvusClient(uri)
    index = client.prepare_index_params()
    index.add_index(field_name=DENSE_FIELD, index_type="FLAT", metric_type="COSINE")
    index.add_index(field_name=SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    store = MilvusVectorStore(
        ShardEndpoint(uri=uri, collection="cosine"), shard=0, dimension=DIM, index=IndexSettings()
    )
    client.create_collection("cosine", schema=build_schema(DIM, 8192), index_params=index)
    with pytest.raises(ConfigurationError, match="COSINE dense index"):
        store.ensure_ready()


def test_dense_scores_are_the_cosine_similarity_of_unit_vectors(store: VectorStore) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(5, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert(
        [
            EmbeddedChunk(
                chunk=Chunk(chunk_id=f"u{i}", doc_id="unit", text=f"t{i}", source="s", position=i),
                vector=[float(x) for x in v],
            )
            for i, v in enumerate(vectors)
        ]
    )
    query = vectors[0] * 0.6 + vectors[1] * 0.8
    query /= np.linalg.norm(query)
    hits = store.search(SearchRequest(vector=[float(x) for x in query], top_k=5))
    expected = {f"u{i}": float(vectors[i] @ query) for i in range(5)}
    assert [h.chunk_id for h in hits] == sorted(expected, key=lambda c: -expected[c])
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.chunk_id], abs=1e-5)


def test_chunks_at_reads_each_position_range_of_each_document_and_nothing_else(store: VectorStore) -> None:
    def placed(doc: str, n: int, seed: int) -> list[EmbeddedChunk]:
        return [
            item.model_copy(update={"chunk": item.chunk.model_copy(update={"position": i})})
            for i, item in enumerate(_items(doc, "v1", n, seed))
        ]

    hostile = 'q" or doc_id != "'
    store.upsert(placed("a", 6, seed=8) + placed("b", 4, seed=9) + placed(hostile, 2, seed=10))
    store.flush()
    found = store.chunks_at([("a", 2, 4), ("b", 3, 9), ('q" or doc_id != "x', 0, 9)])
    assert sorted((c.doc_id, c.position, c.text) for c in found) == [
        ("a", 2, "a v1 2"),
        ("a", 3, "a v1 3"),
        ("a", 4, "a v1 4"),
        ("b", 3, "b v1 3"),
    ]
    assert store.chunks_at([]) == [] and len(store.chunks_at([(hostile, 0, 0)])) == 1


def _epoch_rows(stamps: list[tuple[int, int]]) -> list[EmbeddedChunk]:
    rng = np.random.default_rng(7)
    return [
        EmbeddedChunk(
            chunk=Chunk(chunk_id=f"d::{i}", doc_id="d", text=f"row {i}", position=i, epoch_from=f, epoch_to=t),
            vector=rng.normal(size=DIM).tolist(),
            sparse=SparseVector(indices=[5], values=[1.0 + i]),
        )
        for i, (f, t) in enumerate(stamps)
    ]


epochs = st.integers(min_value=0, max_value=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stamps=st.lists(st.tuples(epochs, epochs), min_size=1, max_size=12),
    upto=epochs,
    pending=st.sets(st.integers(min_value=1, max_value=6), max_size=3),
)
def test_a_snapshot_finds_exactly_the_rows_it_sees_in_every_read(
    store: VectorStore, stamps: list[tuple[int, int]], upto: int, pending: set[int]
) -> None:
    # Snapshot.expr() on the engine against Snapshot.sees() in Python: dense, BM25 and passage reads alike.
    store.delete_chunks(store.chunk_ids("d"))
    rows = _epoch_rows(stamps)
    store.upsert(rows)
    store.flush()
    snapshot = Snapshot(upto=upto, open=sorted(pending))
    expected = {r.chunk.chunk_id for r in rows if snapshot.sees(r.chunk.epoch_from, r.chunk.epoch_to)}
    request = SearchRequest(vector=rows[0].vector, top_k=50, sparse=SparseVector(indices=[5], values=[1.0]))
    assert {h.chunk_id for h in store.search(request.model_copy(update={"snapshot": snapshot}))} == expected
    assert {h.chunk_id for h in store.search_lexical(request.model_copy(update={"snapshot": snapshot}))} == expected
    assert {c.chunk_id for c in store.chunks_at([("d", 0, 20)], snapshot=snapshot)} == expected
    assert len(store.search(request)) == len(rows)  # no snapshot: every row


def test_retire_stamps_rows_and_leaves_everything_else_as_stored(store: VectorStore) -> None:
    rows = _epoch_rows([(1, 0), (2, 0), (0, 0)])
    store.upsert(rows)
    store.flush()
    before = {r.chunk.chunk_id: r for r in store.stored_chunks("d")}
    assert store.retire(["d::0", "d::2", "missing"], 3) == 2
    assert store.row_epochs("d") == {"d::0": (1, 3), "d::1": (2, 0), "d::2": (0, 3)}
    after = {r.chunk.chunk_id: r for r in store.stored_chunks("d")}
    for cid, row in after.items():
        old = before[cid]
        assert row.chunk.model_copy(update={"epoch_to": old.chunk.epoch_to}) == old.chunk
        assert row.sparse == old.sparse and np.allclose(row.vector, old.vector, atol=1e-6)
    assert store.retire(["d::0"], 0) == 1 and store.row_epochs("d")["d::0"] == (1, 0)


def test_opening_vectors_are_each_documents_position_zero_row_as_the_snapshot_sees_it(store: VectorStore) -> None:
    def placed(doc: str, version: str, n: int, seed: int, epoch_from: int, epoch_to: int = 0) -> list[EmbeddedChunk]:
        return [
            item.model_copy(
                update={
                    "chunk": item.chunk.model_copy(
                        update={"position": i, "epoch_from": epoch_from, "epoch_to": epoch_to}
                    )
                }
            )
            for i, item in enumerate(_items(doc, version, n, seed))
        ]

    hostile = 'q" or doc_id != "'
    # a: v1 committed at epoch 1 and retired at 4, v2 written at 4; b: one version; the hostile id: one row
    old, new = placed("a", "v1", 3, seed=1, epoch_from=1, epoch_to=4), placed("a", "v2", 2, seed=2, epoch_from=4)
    b = placed("b", "v1", 2, seed=3, epoch_from=2)
    store.upsert(old + new + b + placed(hostile, "v1", 1, seed=4, epoch_from=1))
    store.flush()

    def unit(vector: list[float]) -> np.ndarray:
        return np.asarray(vector) / np.linalg.norm(vector)

    def read(snapshot: Snapshot | None, *docs: str) -> dict[str, np.ndarray]:
        return {d: unit(v) for d, v in store.opening_vectors(list(docs), snapshot=snapshot).items()}

    before = read(Snapshot(upto=4, open=[4]), "a", "b", "missing")
    after = read(Snapshot(upto=4), "a", "b")
    assert set(before) == set(after) == {"a", "b"}
    # Epoch 4 open: a's opening is v1's position 0; committed: v2's. Never a later position.
    assert np.allclose(before["a"], unit(old[0].vector), atol=1e-5)
    assert np.allclose(after["a"], unit(new[0].vector), atol=1e-5)
    assert np.allclose(before["b"], unit(b[0].vector), atol=1e-5)
    assert set(read(Snapshot(upto=1), "a", "b")) == {"a"}  # b's only version is not committed yet
    assert store.opening_vectors([]) == {}
    assert set(read(None, hostile, "b")) == {hostile, "b"}
    assert set(read(None, 'q" or doc_id != "x')) == set()


def test_dense_vectors_are_read_back_by_chunk_id(store: VectorStore) -> None:
    rows = _items("a", "v1", 3, seed=5)
    hostile = _items('q" or doc_id != "', "v1", 1, seed=6)
    store.upsert(rows + hostile)
    store.flush()
    wanted = [rows[2].chunk.chunk_id, "missing", rows[0].chunk.chunk_id, hostile[0].chunk.chunk_id]
    got = store.dense_vectors(wanted)
    assert set(got) == {rows[2].chunk.chunk_id, rows[0].chunk.chunk_id, hostile[0].chunk.chunk_id}
    for row in (rows[0], rows[2], hostile[0]):
        vector = np.asarray(got[row.chunk.chunk_id])
        assert np.allclose(
            vector / np.linalg.norm(vector), np.asarray(row.vector) / np.linalg.norm(row.vector), atol=1e-5
        )
    assert store.dense_vectors([]) == {}
