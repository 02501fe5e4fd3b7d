"""BM25 as sparse vectors: tokenisation parity with bm25s, exact scores by inner product, corpus statistics."""

from __future__ import annotations

import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import bm25s
import boto3
import pytest
import Stemmer
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws
from shardrag.artifacts import FileArtifactStore, S3ArtifactStore
from shardrag.bm25 import (
    EMPTY_MARKER,
    LENGTH_ID,
    Bm25Encoder,
    CorpusStats,
    Tokenizer,
    grid_mean,
    idf,
    stored_length,
    term_id,
)
from shardrag.records import Chunk, EmbeddedChunk, SparseVector
from shardrag.store.accounting import TermAccountingStore
from shardrag.store.memory import InMemoryVectorStore
from shardrag.term_stats import (
    _FORMAT,
    CorpusStatsCache,
    TermStatsStore,
    TermStatsTracker,
    decode_stats,
    encode_stats,
    rebuild_term_stats,
    stats_name,
)

CORPUS = [
    "Ocean tides are caused by the gravitational pull of the Moon and the Sun.",
    "The Moon orbits the Earth; its gravity raises tides in the oceans.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Running shoes wear out after several hundred kilometres of running.",
]


def test_tokenizer_matches_bm25s() -> None:
    stemmer = Stemmer.Stemmer("english")
    for text in [*CORPUS, "The QUICK brown foxes were jumping, isn't it? 42 x y", "Café naïve résumé"]:
        tokens = bm25s.tokenize([text], stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)
        assert Tokenizer().terms(text) == tokens[0]


def test_term_ids_are_stable_and_never_the_empty_marker_id() -> None:
    assert term_id("moon") == term_id("moon") != term_id("tide")
    assert all(1 <= term_id(t) < 2**32 - 1 for t in ("a", "moon", "x" * 300, "é"))


def test_stopword_only_text_stores_the_empty_marker() -> None:
    encoder = Bm25Encoder()
    assert encoder.document("the and of to") == EMPTY_MARKER
    assert encoder.document("") == EMPTY_MARKER


def _reference_bm25(query: str, docs: list[str], k1: float, b: float, avgdl: float) -> list[float]:
    """Textbook BM25 (Lucene IDF, each distinct query term once) computed directly from token counts."""
    tok = Tokenizer()
    counts = [Counter(tok.terms(d)) for d in docs]
    n = len(docs)
    scores = []
    for tf in counts:
        length = sum(tf.values())
        score = 0.0
        for term in set(tok.terms(query)):
            df = sum(1 for c in counts if term in c)
            if df and tf[term]:
                norm = tf[term] + k1 * (1 - b + b * length / avgdl)
                score += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf[term] * (k1 + 1) / norm
        scores.append(score)
    return scores


def _dot(a: SparseVector, b: SparseVector) -> float:
    weights = a.as_dict()
    return sum(weights.get(i, 0.0) * v for i, v in zip(b.indices, b.values, strict=True))


def test_inner_product_of_the_two_sides_is_bm25() -> None:
    encoder = Bm25Encoder(k1=1.2, b=0.4, avgdl=9.0)
    stats = CorpusStats()
    vectors = [encoder.document(d) for d in CORPUS]
    stats.count(vectors, +1)
    query = encoder.query("What causes the tides of the ocean? Moon moon", stats)
    got = [_dot(query, v) for v in vectors]
    want = _reference_bm25("What causes the tides of the ocean? Moon moon", CORPUS, 1.2, 0.4, 9.0)
    assert got == pytest.approx(want, rel=1e-9)
    assert got[0] > got[1] > 0 and got[2] == got[3] == 0


def test_stats_summed_over_shards_give_the_same_idf_as_one_index() -> None:
    encoder = Bm25Encoder()
    vectors = [encoder.document(d) for d in CORPUS]
    whole, left, right = CorpusStats(), CorpusStats(), CorpusStats()
    whole.count(vectors, +1)
    left.count(vectors[:1], +1)
    right.count(vectors[1:], +1)
    merged = CorpusStats()
    merged.add(left)
    merged.add(right)
    assert merged == whole
    assert encoder.query("moon tides", merged) == encoder.query("moon tides", whole)


def test_query_terms_unknown_to_the_corpus_are_dropped() -> None:
    stats = CorpusStats()
    stats.count([Bm25Encoder().document(CORPUS[0])], +1)
    query = Bm25Encoder().query("moon zebra", stats)
    assert query.indices == [term_id("moon")]
    assert query.values == [pytest.approx(idf(1, 1))]


def test_counts_never_go_below_zero() -> None:
    stats = CorpusStats()
    vector = Bm25Encoder().document(CORPUS[0])
    stats.count([vector], +1)
    delta = CorpusStats()
    delta.count([vector, vector], -1)  # a replayed delete
    stats.add(delta)
    assert stats == CorpusStats()


def test_stats_round_trip_through_bytes() -> None:
    stats = CorpusStats()
    stats.count([Bm25Encoder().document(d) for d in CORPUS], +1)
    assert decode_stats(encode_stats(stats)) == stats


def test_file_artifacts_compare_and_swap(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path)
    assert store.get("x/a.bin") is None
    assert store.put("x/a.bin", b"one", expected_etag=None)
    assert not store.put("x/a.bin", b"two", expected_etag=None)  # exists already
    current = store.get("x/a.bin")
    assert current is not None and current.data == b"one"
    assert not store.put("x/a.bin", b"two", expected_etag="stale")
    assert store.put("x/a.bin", b"two", expected_etag=current.etag)
    with pytest.raises(ValueError, match="leaves"):
        store.get("../outside")


def test_s3_artifacts_compare_and_swap() -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="artefacts")
        store = S3ArtifactStore(client, "artefacts", prefix="index")
        assert store.get("a.npz") is None
        assert store.put("a.npz", b"one", expected_etag=None)
        assert not store.put("a.npz", b"two", expected_etag=None)
        current = store.get("a.npz")
        assert current is not None and current.data == b"one"
        assert not store.put("a.npz", b"two", expected_etag='"0000"')
        assert store.put("a.npz", b"two", expected_etag=current.etag)
        assert client.get_object(Bucket="artefacts", Key="index/a.npz")["Body"].read() == b"two"


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    stats_store = TermStatsStore(FileArtifactStore(tmp_path), [stats_name("c", 0)])
    vector = Bm25Encoder().document(CORPUS[0])

    def write() -> None:
        for _ in range(5):
            delta = CorpusStats()
            delta.count([vector], +1)
            assert stats_store.apply(0, delta)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats_store.load(0).documents == 20
    assert stats_store.load(0).df[vector.indices[1]] == 20  # indices[0] is the chunk's length, not a term
    assert stats_store.load(0).tokens == 20 * len(Tokenizer().terms(CORPUS[0]))


def _chunk(doc: str, version: str, i: int, text: str) -> EmbeddedChunk:
    encoder = Bm25Encoder()
    return EmbeddedChunk(
        chunk=Chunk(chunk_id=f"{doc}::{version}::{i}", doc_id=doc, text=text, version=version),
        vector=[1.0, float(i), 0.0, 0.0],
        sparse=encoder.document(text),
    )


def test_accounting_store_counts_what_is_stored_through_replays_overwrites_and_deletes(tmp_path: Path) -> None:
    stats_store = TermStatsStore(FileArtifactStore(tmp_path), [stats_name("c", 0)])
    store = TermAccountingStore(
        InMemoryVectorStore(dimension=4), shard=0, tracker=TermStatsTracker(lambda: stats_store)
    )
    first = [_chunk("d", "v1", i, CORPUS[i]) for i in range(2)]
    store.upsert(first)
    store.upsert(first)  # a redelivered event
    store.flush()
    expected = CorpusStats()
    expected.count([c.sparse for c in first if c.sparse], +1)
    assert stats_store.load(0) == expected

    second = [_chunk("d", "v2", 0, CORPUS[2])]
    store.upsert(second)
    store.delete_document("d", keep_version="v2")
    store.flush()
    expected = CorpusStats()
    expected.count([c.sparse for c in second if c.sparse], +1)
    assert stats_store.load(0) == expected

    store.delete_document("d")
    store.delete_document("d")
    store.flush()
    assert stats_store.load(0) == CorpusStats()


def test_a_flush_that_keeps_losing_races_keeps_its_delta(tmp_path: Path) -> None:
    class Contended(TermStatsStore):
        def apply(self, shard: int, delta: CorpusStats, scope: str = "", **ids: str | None) -> bool:
            return False

    contended = Contended(FileArtifactStore(tmp_path), ["s"])
    real = TermStatsStore(FileArtifactStore(tmp_path), ["s"])
    stores = [contended]
    tracker = TermStatsTracker(lambda: stores[0])
    tracker.record(0, added=[Bm25Encoder().document(CORPUS[0])], removed=[])
    with pytest.raises(RuntimeError, match=r"stayed contended.*kept pending"):
        tracker.flush(0)
    stores[0] = real  # the race is over: the kept delta is what the next flush applies
    tracker.flush(0)
    tracker.flush(0)
    assert real.load(0).documents == 1


def test_query_side_cache_rereads_after_its_ttl() -> None:
    loads: list[int] = []

    def load() -> CorpusStats:
        loads.append(1)
        return CorpusStats(documents=len(loads))

    cache = CorpusStatsCache(load, ttl_s=3600)
    assert cache.get().documents == 1 and cache.get().documents == 1
    cache.invalidate()
    assert cache.get().documents == 2
    assert CorpusStatsCache(load, ttl_s=0).get().documents == 3


def test_query_side_cache_rereads_early_for_a_term_it_does_not_know_at_most_every_so_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shardrag.term_stats as module

    now = {"t": 1000.0}
    monkeypatch.setattr(module.time, "monotonic", lambda: now["t"])
    loads: list[int] = []

    def load() -> CorpusStats:
        loads.append(1)
        return CorpusStats(documents=len(loads), df={7: 1} if len(loads) > 1 else {})

    cache = CorpusStatsCache(load, ttl_s=3600, unknown_refresh_s=1.0)
    assert cache.get([7]).documents == 1
    assert cache.get([7]).documents == 1  # unknown, but read less than a second ago
    now["t"] += 1.5
    assert cache.get([]).documents == 1  # nothing unknown asked: the TTL rules
    assert cache.get([7]).df == {7: 1} and len(loads) == 2  # a just-uploaded term is searchable
    now["t"] += 5
    assert cache.get([7]).documents == 2  # known now: no re-read


def test_query_side_cache_rereads_for_unknown_terms_less_often_when_reading_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Tables read from S3 take tens of milliseconds: a stream of queries with words nobody uploaded must not spend
    # more than a tenth of the time re-reading them. Local files take milliseconds: re-read every quarter second.
    import shardrag.term_stats as module

    now = {"t": 1000.0}
    monkeypatch.setattr(module.time, "monotonic", lambda: now["t"])
    loads: list[int] = []

    def slow_load() -> CorpusStats:
        loads.append(1)
        now["t"] += 0.08  # the read itself
        return CorpusStats(documents=len(loads))

    cache = CorpusStatsCache(slow_load, ttl_s=3600, unknown_refresh_s=0.25)
    cache.get([7])
    now["t"] += 0.5
    cache.get([7])
    assert len(loads) == 1  # 0.58 s since a 0.08 s read: not yet (0.8 s)
    now["t"] += 0.3
    cache.get([7])
    assert len(loads) == 2

    def fast_load() -> CorpusStats:
        loads.append(1)
        now["t"] += 0.002
        return CorpusStats(documents=len(loads))

    fast = CorpusStatsCache(fast_load, ttl_s=3600, unknown_refresh_s=0.25)
    fast.get([7])
    now["t"] += 0.3
    fast.get([7])
    assert len(loads) == 4


def test_rebuild_recounts_a_table_that_lost_a_delta(tmp_path: Path) -> None:
    stats_store = TermStatsStore(FileArtifactStore(tmp_path), [stats_name("c", 0), stats_name("c", 1)])
    inner = [InMemoryVectorStore(shard=i, dimension=4) for i in range(2)]
    store = TermAccountingStore(inner[0], shard=0, tracker=TermStatsTracker(lambda: stats_store))
    store.upsert([_chunk("d", "v1", i, CORPUS[i]) for i in range(2)])
    store.flush()
    inner[1].upsert([_chunk("e", "v1", 0, CORPUS[3])])  # written by a worker that died before its flush
    assert stats_store.load(1) == CorpusStats()
    expected = stats_store.load(0)

    assert rebuild_term_stats(inner.__getitem__, stats_store, batch_size=1) == {0: 2, 1: 1}
    assert stats_store.load(0) == expected
    recounted = CorpusStats()
    recounted.count([Bm25Encoder().document(CORPUS[3])], +1)
    assert stats_store.load(1) == recounted


def test_deltas_applied_out_of_order_converge_to_the_recount(tmp_path: Path) -> None:
    # Worker B's removal of a chunk lands before worker A's addition of it (two flushes racing). Clamped at zero,
    # the removal was lost and the table kept the chunk for good.
    stats_store = TermStatsStore(FileArtifactStore(tmp_path), [stats_name("c", 0)])
    vector = Bm25Encoder().document(CORPUS[0])
    adding, removing = CorpusStats(), CorpusStats()
    adding.count([vector], +1)
    removing.count([vector], -1)
    assert stats_store.apply(0, removing)
    assert stats_store.merged() == CorpusStats()  # a negative count is never shown to the IDF
    assert stats_store.apply(0, adding)
    assert stats_store.load(0) == CorpusStats()


def test_the_compare_and_swap_loop_never_sleeps_after_its_last_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class AlwaysRaced(FileArtifactStore):
        def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
            return False

    pauses: list[float] = []
    monkeypatch.setattr("shardrag.term_stats.time.sleep", pauses.append)
    monkeypatch.setattr("shardrag.term_stats.random.uniform", lambda low, high: high)
    stats_store = TermStatsStore(AlwaysRaced(tmp_path), [stats_name("c", 0)])
    assert not stats_store.apply(0, CorpusStats(documents=1))
    attempts = len(pauses) + 1
    assert attempts == 12 and sum(pauses) <= 5.0  # was: 12 pauses, the last one after the last attempt, ~205 s


def test_a_failed_artefact_write_keeps_the_delta_for_the_next_flush(tmp_path: Path) -> None:
    class Flaky(FileArtifactStore):
        fail = True

        def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
            if Flaky.fail:
                raise OSError("injected")
            return super().put(name, data, expected_etag=expected_etag)

    stats_store = TermStatsStore(Flaky(tmp_path), [stats_name("c", 0)])
    tracker = TermStatsTracker(lambda: stats_store)
    tracker.record(0, added=[Bm25Encoder().document(CORPUS[0])], removed=[])
    with pytest.raises(RuntimeError, match="OSError: injected"):
        tracker.flush(0)
    Flaky.fail = False
    tracker.flush(0)
    assert stats_store.load(0).documents == 1


def test_a_chunk_carries_its_length_and_the_table_the_total_beside_the_count() -> None:
    vectors = Bm25Encoder().documents(CORPUS)
    lengths = [len(Tokenizer().terms(d)) for d in CORPUS]
    assert [stored_length(v) for v in vectors] == lengths
    assert stored_length(EMPTY_MARKER) == 0 and stored_length(SparseVector(indices=[5], values=[1.0])) is None
    stats = CorpusStats()
    stats.count([*vectors, EMPTY_MARKER], +1)
    assert (stats.documents, stats.tokens, stats.measured) == (5, sum(lengths), 5)
    assert stats.avgdl == sum(lengths) / 5
    assert LENGTH_ID not in stats.df  # never a term: no query can carry it, so it never scores


def test_one_batch_holding_the_corpus_is_textbook_bm25_with_the_true_mean_length_on_the_grid() -> None:
    encoder = Bm25Encoder(k1=1.2, b=0.4)
    vectors = encoder.documents(CORPUS)
    stats = CorpusStats()
    stats.count(vectors, +1)
    mean = sum(len(Tokenizer().terms(d)) for d in CORPUS) / len(CORPUS)
    assert stats.avgdl == pytest.approx(mean)
    question = "What causes the tides of the ocean? Moon moon"
    got = [_dot(encoder.query(question, stats), v) for v in vectors]
    assert got == pytest.approx(_reference_bm25(question, CORPUS, 1.2, 0.4, grid_mean(mean)), rel=1e-9)
    pinned = Bm25Encoder(k1=1.2, b=0.4, avgdl=mean)  # a pinned mean is used as given, not on the grid
    got = [_dot(pinned.query(question, stats), v) for v in pinned.documents(CORPUS)]
    assert got == pytest.approx(_reference_bm25(question, CORPUS, 1.2, 0.4, mean), rel=1e-9)


@given(st.floats(min_value=1e-3, max_value=1e6))
def test_the_mean_grid_is_within_one_percent_and_idempotent(mean: float) -> None:
    on_grid = grid_mean(mean)
    assert abs(on_grid / mean - 1) <= 0.0101
    assert grid_mean(on_grid) == on_grid


def test_a_batch_is_weighed_by_the_mean_of_the_corpus_it_joins() -> None:
    encoder = Bm25Encoder(k1=1.2, b=0.4)
    stored = CorpusStats()
    stored.count(encoder.documents(CORPUS[:3]), +1)
    joined = encoder.documents(CORPUS[3:], stored)
    lengths = [len(Tokenizer().terms(d)) for d in CORPUS]
    alone = Bm25Encoder(k1=1.2, b=0.4, avgdl=grid_mean(sum(lengths) / len(lengths))).document(CORPUS[3])
    assert joined[0] == alone
    # A pinned mean ignores the corpus.
    pinned = Bm25Encoder(k1=1.2, b=0.4, avgdl=64.0)
    assert pinned.documents(CORPUS[3:], stored) == [pinned.document(CORPUS[3])]


def test_a_table_written_before_lengths_reads_as_one_without_a_measured_mean() -> None:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, format=np.int64(1), documents=np.int64(3), ids=np.array([7], np.uint32), counts=np.array([2])
    )
    old = decode_stats(buffer.getvalue())
    assert (old.documents, old.df, old.tokens, old.measured, old.avgdl) == (3, {7: 2}, 0, 0, None)
    # Chunks written since then give the mean on their own; the old ones (no length stored) never skew it.
    old.count(Bm25Encoder().documents(CORPUS[:2]), +1)
    assert old.avgdl == sum(len(Tokenizer().terms(d)) for d in CORPUS[:2]) / 2
    old.count([SparseVector(indices=[7], values=[0.5])], -1)  # an old chunk deleted
    assert old.measured == 2 and old.documents == 4
    assert decode_stats(encode_stats(old)) == old and _FORMAT == 3


_TEXTS = st.sampled_from([*CORPUS, "the of and", "moon " * 40, "Tides tides tides."])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "delete"]), st.integers(0, 3), st.lists(_TEXTS, min_size=1, max_size=4)),
        min_size=1,
        max_size=12,
    )
)
def test_the_total_length_stays_exact_through_any_sequence_of_writes(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, list[str]]]
) -> None:
    """Overwrites, redeliveries and deletes in any order: the table always equals a recount of what is stored,
    and its mean is the mean length of the stored chunks."""
    stats_store = TermStatsStore(FileArtifactStore(tmp_path_factory.mktemp("stats")), [stats_name("c", 0)])
    inner = InMemoryVectorStore(dimension=4)
    store = TermAccountingStore(inner, shard=0, tracker=TermStatsTracker(lambda: stats_store))
    encoder = Bm25Encoder(k1=1.2, b=0.4)
    for step, (op, doc, texts) in enumerate(ops):
        if op == "delete":
            store.delete_document(f"d{doc}")
            continue
        version = f"v{step % 2}"  # the same version twice over: a redelivered write
        vectors = encoder.documents(texts, stats_store.merged())
        chunks = [
            EmbeddedChunk(
                chunk=Chunk(chunk_id=f"d{doc}::{version}::{i}", doc_id=f"d{doc}", text=t, version=version),
                vector=[1.0, 0.0, 0.0, 0.0],
                sparse=v,
            )
            for i, (t, v) in enumerate(zip(texts, vectors, strict=True))
        ]
        store.upsert(chunks)
        store.delete_document(f"d{doc}", keep_version=version)
    stored = [item for batch in inner.scan() for item in batch]
    recount = CorpusStats()
    recount.count([item.sparse or EMPTY_MARKER for item in stored], +1)
    assert stats_store.load(0) == recount
    lengths = [len(Tokenizer().terms(item.chunk.text)) for item in stored]
    assert recount.tokens == sum(lengths) and recount.measured == len(stored)


def test_the_indexer_weighs_each_tenants_batch_by_that_tenants_mean(hashing_embedder: Any) -> None:
    from shardrag.chunking import Chunker, Document
    from shardrag.indexing import DocumentIndexer

    encoder = Bm25Encoder(k1=1.2, b=0.4)
    tables = {"a": CorpusStats(), "b": CorpusStats()}
    tables["a"].count(encoder.documents(["moon " * 50]), +1)  # tenant a's corpus holds one long chunk
    asked: list[str] = []

    def corpus(tenant: str) -> CorpusStats:
        asked.append(tenant)
        return tables[tenant]

    store = InMemoryVectorStore(dimension=hashing_embedder.dimension)
    indexer = DocumentIndexer(
        chunker=Chunker(size=64, overlap=8, title_prefix=False),
        embedder=hashing_embedder,
        store_for=lambda shard: store,
        shard_count=1,
        bm25=encoder,
        corpus_stats=corpus,
    )
    indexer.run([Document(doc_id=t, text=CORPUS[0], tenant=t, version="1") for t in ("a", "b")])
    stored = {item.chunk.tenant: item.sparse for batch in store.scan() for item in batch}
    assert sorted(asked) == ["a", "b"]  # one read per tenant per batch
    assert stored["a"] == encoder.documents([CORPUS[0]], tables["a"])[0]
    assert stored["b"] == encoder.document(CORPUS[0])
    assert stored["a"] != stored["b"]  # a's mean is longer: the same chunk weighs more there
