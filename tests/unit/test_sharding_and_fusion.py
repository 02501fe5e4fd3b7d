from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from shardrag.errors import ShardsUnavailable
from shardrag.fusion import ScoreMergeFuser
from shardrag.records import Chunk, EmbeddedChunk, Hit, SearchRequest, ShardResult
from shardrag.sharding import shard_for
from shardrag.store.memory import InMemoryVectorStore


def test_placement_is_stable_across_processes() -> None:
    # Python's hash() is salted per process; placement must not be.
    ids = ["doc-1", "sample/tides.txt", "ünïcode", ""]
    here = [shard_for(i, 8) for i in ids]
    code = f"from shardrag.sharding import shard_for; print([shard_for(i, 8) for i in {ids!r}])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()


def test_placement_spreads_documents_evenly() -> None:
    counts = Counter(shard_for(f"doc-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 900  # 1000 expected per shard


def _random_chunks(n: int, dim: int, seed: int) -> list[EmbeddedChunk]:
    rng = np.random.default_rng(seed)
    return [
        EmbeddedChunk(
            chunk=Chunk(chunk_id=f"d{i}::v::0", doc_id=f"d{i}", text=f"t{i}"),
            vector=rng.normal(size=dim).tolist(),
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("shards", [2, 3, 8])
def test_merged_shard_results_equal_one_index(shards: int) -> None:
    items = _random_chunks(300, 16, seed=shards)
    single = InMemoryVectorStore(dimension=16)
    single.upsert(items)
    stores = [InMemoryVectorStore(shard=s, dimension=16) for s in range(shards)]
    for item in items:
        stores[shard_for(item.chunk.doc_id, shards)].upsert([item])
    query = SearchRequest(vector=np.random.default_rng(99).normal(size=16).tolist(), top_k=10)
    results = [ShardResult(shard=s, status="ok", hits=store.search(query)) for s, store in enumerate(stores)]
    fused = ScoreMergeFuser().run(results, 10)
    assert [h.chunk_id for h in fused.hits] == [h.chunk_id for h in single.search(query)]
    assert not fused.degraded


def _hit(chunk_id: str, score: float, shard: int = 0) -> Hit:
    return Hit(chunk_id=chunk_id, doc_id=chunk_id, score=score, text="", shard=shard)


def test_failed_shard_degrades_and_is_listed() -> None:
    results = [
        ShardResult(shard=0, status="ok", hits=[_hit("a", 0.9)]),
        ShardResult(shard=1, status="failed", error="ShardSearchFailed"),
        ShardResult(shard=2, status="skipped"),
    ]
    fused = ScoreMergeFuser().run(results, 5)
    assert fused.degraded and fused.failed == [1] and fused.searched == [0] and fused.skipped == [2]


def test_no_shard_answering_is_unavailable() -> None:
    with pytest.raises(ShardsUnavailable):
        ScoreMergeFuser().run([ShardResult(shard=0, status="failed"), ShardResult(shard=1, status="failed")], 5)


def test_duplicates_keep_their_best_score_and_ties_break_by_id() -> None:
    results = [
        ShardResult(shard=0, status="ok", hits=[_hit("b", 0.5), _hit("a", 0.5)]),
        ShardResult(shard=1, status="ok", hits=[_hit("b", 0.7, shard=1)]),
    ]
    fused = ScoreMergeFuser().run(results, 5)
    assert [(h.chunk_id, h.score) for h in fused.hits] == [("b", 0.7), ("a", 0.5)]
