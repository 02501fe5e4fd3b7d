"""What reading one snapshot costs a query (``shardrag.visibility``): shard search on Milvus Lite with and without
the snapshot's filter, side by side in one run, dense and BM25, with no epoch open and with a few open; and the
snapshot read itself (the local clock file). Prints JSON.

Usage::

    python -m bench.visibility [--rows 4500] [--queries 200]

Random unit vectors and sparse rows stand in for chunks (the cost depends on the row count and the filter, not on
what the vectors mean); a tenth of the rows carry a later epoch, a twentieth are retired, as after many overwrites.
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
from shardrag.records import Chunk, EmbeddedChunk, SearchRequest, Snapshot, SparseVector
from shardrag.store.milvus import MilvusVectorStore
from shardrag.visibility import FileEpochClock

DIM = 384


def _rows(rng: np.random.Generator, n: int) -> list[EmbeddedChunk]:
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = []
    for i in range(n):
        terms = sorted({int(t) for t in rng.integers(1, 5000, size=40)})
        rows.append(
            EmbeddedChunk(
                chunk=Chunk(
                    chunk_id=f"c{i}",
                    doc_id=f"d{i // 4}",
                    text="x" * 400,
                    epoch_from=int(rng.integers(1, 50)) if i % 10 == 0 else 0,
                    epoch_to=int(rng.integers(1, 50)) if i % 20 == 1 else 0,
                ),
                vector=vectors[i].tolist(),
                sparse=SparseVector(indices=terms, values=[1.0] * len(terms)),
            )
        )
    return rows


def _p50_ms(store: MilvusVectorStore, requests: list[SearchRequest], lexical: bool) -> float:
    timings = []
    for request in requests:
        started = time.perf_counter()
        (store.search_lexical if lexical else store.search)(request)
        timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4500)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    out: dict[str, Any] = {"rows": args.rows, "queries": args.queries}
    with tempfile.TemporaryDirectory() as tmp:
        store = MilvusVectorStore(
            ShardEndpoint(uri=str(Path(tmp) / "shard.db")), shard=0, dimension=DIM, index=IndexSettings()
        )
        store.ensure_ready()
        rows = _rows(rng, args.rows)
        for start in range(0, len(rows), 1000):
            store.upsert(rows[start : start + 1000])
        store.flush()
        queries = _rows(np.random.default_rng(11), args.queries)
        snapshots = {
            "none": None,
            "no epoch open": Snapshot(upto=60),
            "3 epochs open": Snapshot(upto=60, open=[7, 21, 44]),
        }
        for lexical in (False, True):
            requests = [SearchRequest(vector=q.vector, top_k=100, sparse=q.sparse) for q in queries]
            _p50_ms(store, requests[:20], lexical)  # warm up
            # Interleaved rounds, so that drift in the machine's speed falls on every variant alike.
            results: dict[str, list[float]] = {name: [] for name in snapshots}
            for _ in range(3):
                for name, snapshot in snapshots.items():
                    variant = [r.model_copy(update={"snapshot": snapshot}) for r in requests]
                    results[name].append(_p50_ms(store, variant, lexical))
            side = "bm25" if lexical else "dense"
            out[side] = {name: round(statistics.median(values), 3) for name, values in results.items()}
            base = out[side]["none"]
            out[side]["ratio"] = {name: round(v / base, 3) for name, v in out[side].items() if name != "none"}
        store.close()
        clock = FileEpochClock(Path(tmp) / "epochs.json")
        for _ in range(3):
            clock.commit(clock.begin())
        clock.begin()
        timings = []
        for _ in range(1000):
            started = time.perf_counter()
            clock.snapshot()
            timings.append((time.perf_counter() - started) * 1e6)
        out["snapshot_read_us_p50"] = round(statistics.median(timings), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
