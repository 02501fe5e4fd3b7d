"""What reading the feedback documents' opening rows costs on Milvus Lite (``shardrag.feedback.opening_vectors``):
by primary key (``VectorStore.dense_vectors``, when the first pass already found the row) against by document
and position under a snapshot (``VectorStore.opening_vectors``), beside a dense search of the same shard for
scale, interleaved in one run. Prints JSON.

Usage::

    python -m bench.opening_read [--rows 4500] [--reads 200]

The rows are ``bench.visibility``'s (random unit vectors and sparse rows, a tenth with a later epoch), four
chunks to a document, so a shard of 4,500 rows holds ~1,100 documents, as a SciFact shard does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from shardrag.config import IndexSettings, ShardEndpoint
from shardrag.records import SearchRequest, Snapshot
from shardrag.store.milvus import MilvusVectorStore

from bench.visibility import DIM, _rows


def _p50_ms(calls: list[Callable[[], object]]) -> float:
    timings = []
    for call in calls:
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=4500)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    rows = [
        r.model_copy(update={"chunk": r.chunk.model_copy(update={"position": i % 4})})
        for i, r in enumerate(_rows(rng, args.rows))
    ]
    openings = [r for r in rows if r.chunk.position == 0]
    pick = np.random.default_rng(11)
    pairs = [pick.choice(len(openings), size=2, replace=False) for _ in range(args.reads)]
    snapshot = Snapshot(upto=60, open=[7, 21, 44])
    out: dict[str, Any] = {"rows": args.rows, "reads": args.reads, "documents_per_read": 2}
    with tempfile.TemporaryDirectory() as tmp:
        store = MilvusVectorStore(
            ShardEndpoint(uri=str(Path(tmp) / "shard.db")), shard=0, dimension=DIM, index=IndexSettings()
        )
        store.ensure_ready()
        for start in range(0, len(rows), 1000):
            store.upsert(rows[start : start + 1000])
        store.flush()
        variants: dict[str, list[Callable[[], object]]] = {
            "by id (dense_vectors)": [
                lambda p=p: store.dense_vectors([openings[i].chunk.chunk_id for i in p]) for p in pairs
            ],
            "by document and position (opening_vectors)": [
                lambda p=p: store.opening_vectors([openings[i].chunk.doc_id for i in p], snapshot=snapshot)
                for p in pairs
            ],
            "dense search, top 38 (for scale)": [
                lambda p=p: store.search(SearchRequest(vector=openings[p[0]].vector, top_k=38, snapshot=snapshot))
                for p in pairs
            ],
        }
        for calls in variants.values():
            _p50_ms(calls[:20])  # warm up
        # Interleaved rounds, so that drift in the machine's speed falls on every variant alike.
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(3):
            for name, calls in variants.items():
                results[name].append(_p50_ms(calls))
        store.close()
    out["p50_ms"] = {name: round(statistics.median(values), 3) for name, values in results.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
