"""Shard search latency on Milvus Lite as a shard grows: rows per shard -> p50/p95, per index type. Prints JSON.

Usage::

    python -m bench.search [--sizes 1000,12500,50000,100000] [--queries 100] [--index FLAT,IVF_FLAT]

Random unit vectors stand in for chunk embeddings: search cost on Milvus Lite depends on the row count and
the index, not on what the vectors mean. Data is flushed (sealed) before timing, as ingestion does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from shardrag.config import IndexSettings, ShardEndpoint
from shardrag.records import Chunk, EmbeddedChunk, SearchRequest
from shardrag.store.milvus import MilvusVectorStore

DIM = 384
INDEXES = {
    "FLAT": IndexSettings(type="FLAT"),
    "IVF_FLAT": IndexSettings(type="IVF_FLAT", params={"nlist": 256}, search_params={"nprobe": 16}),
    "HNSW": IndexSettings(type="HNSW", params={"M": 16, "efConstruction": 200}, search_params={"ef": 64}),
}


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def measure(size: int, index: str, queries: int, workdir: Path) -> dict[str, Any]:
    rng = np.random.default_rng(size)
    store = MilvusVectorStore(
        ShardEndpoint(uri=str(workdir / f"{index}-{size}.db")), shard=0, dimension=DIM, index=INDEXES[index]
    )
    store.ensure_ready()
    started = time.perf_counter()
    stored = []
    for offset in range(0, size, 5000):
        n = min(5000, size - offset)
        vectors = _unit(rng, n)
        stored.append(vectors)
        store.upsert(
            [
                EmbeddedChunk(
                    chunk=Chunk(chunk_id=f"c{offset + i}", doc_id=f"d{(offset + i) // 4}", text="x" * 400),
                    vector=vectors[i].tolist(),
                )
                for i in range(n)
            ]
        )
    store.flush()
    load_s = time.perf_counter() - started
    probes = _unit(rng, queries + 5)
    for q in probes[:5]:  # warm-up
        store.search(SearchRequest(vector=q.tolist(), top_k=10))
    matrix = np.concatenate(stored)
    samples, recalls = [], []
    for q in probes[5:]:
        t = time.perf_counter()
        hits = store.search(SearchRequest(vector=q.tolist(), top_k=10))
        samples.append((time.perf_counter() - t) * 1000)
        exact = {f"c{i}" for i in np.argsort(-(matrix @ q))[:10]}
        recalls.append(len(exact & {h.chunk_id for h in hits}) / 10)
    store.close()
    samples.sort()
    return {
        "rows": size,
        "index": index,
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(0.95 * (len(samples) - 1))], 2),
        "min_ms": round(samples[0], 2),
        "recall_at_10": round(statistics.mean(recalls), 3),
        "load_s": round(load_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,12500,50000,100000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--index", default="FLAT,IVF_FLAT")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in args.index.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                row = measure(size, index, args.queries, Path(tmp))
                print(json.dumps(row), flush=True)
                results.append(row)
    print(json.dumps({"benchmark": "shard_search", "results": results}))


if __name__ == "__main__":
    main()
