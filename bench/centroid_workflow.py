"""Centroid routing through the real stages on SciFact: Milvus Lite shards behind the real TermAccountingStore,
the real CentroidPlacement (artefact bootstrap included) and the real QueryWorkflow (Embed -> Route -> ShardSearch
-> FuseAndGenerate). Complements ``bench/centroid_study.py``, which measures the same rules on exact numpy search.

Usage::

    python -m bench.centroid_workflow [--cache /tmp/scifact_cache] [--shards 8] [--json out.json]

Each query runs per mode and probing rule as the state machine runs it: the Route step's shards search (each told
how many search, which sets hybrid's per-shard depth) and FuseAndGenerate fuses them (a chunk held by several
probed shards counts once); the reference searches all shards.
Relative recall@10 = |top 10 fused from the probed shards ∩ top 10 fused from all shards| / 10, chunk ids.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from shardrag.artifacts import FileArtifactStore
from shardrag.bm25 import Bm25Encoder
from shardrag.config import IndexSettings, Settings, ShardEndpoint
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.records import Chunk, EmbeddedChunk
from shardrag.services import build_centroid_cache, build_placement, build_query_workflow
from shardrag.store.accounting import TermAccountingStore
from shardrag.store.milvus import MilvusVectorStore
from shardrag.term_stats import TermStatsStore, TermStatsTracker, stats_name

DATA = Path("/work/shared/datasets/scifact")
TOP_K = 10
RULES: list[tuple[str, int | None]] = [("adaptive (default)", None), ("probe 1", 1), ("probe 2", 2), ("probe 3", 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/scifact_cache"))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [json.loads(line) for line in (args.cache / "chunks.jsonl").open()]
    dense = np.load(args.cache / "dense.npy").astype(np.float32)
    query_ids: list[str] = json.loads((args.cache / "query_ids.json").read_text())
    query_vectors = np.load(args.cache / "queries.npy").astype(np.float32)
    texts = {q["_id"]: q["text"] for q in map(json.loads, (DATA / "queries.jsonl").open())}
    questions = [texts[q] for q in query_ids]
    by_question = {q: [float(x) for x in v] for q, v in zip(questions, query_vectors, strict=True)}

    root = Path(tempfile.mkdtemp(prefix="centroid-workflow-"))
    settings = Settings(
        data_dir=str(root), store={"shard_count": args.shards, "collection": "c"}, routing={"mode": "centroid"}
    )
    artifacts = FileArtifactStore(root / "index")
    stats = TermStatsStore(artifacts, [stats_name("c", i) for i in range(args.shards)])
    tracker = TermStatsTracker(lambda: stats)
    stores = [
        TermAccountingStore(
            MilvusVectorStore(
                ShardEndpoint(uri=str(root / f"shard-{i}.db"), collection="c"),
                shard=i,
                dimension=dense.shape[1],
                index=IndexSettings(),
            ),
            shard=i,
            tracker=tracker,
        )
        for i in range(args.shards)
    ]
    cache = build_centroid_cache(settings, artifacts)
    placement = build_placement(settings, cache)
    encoder = Bm25Encoder()

    # Ingestion as the indexer does it: the first batch (8192 chunks, a random sample as the training sample
    # would be) bootstraps the artefact, later batches are placed by it.
    order = np.random.default_rng(0).permutation(len(rows))
    batch = settings.routing.centroid.train_sample
    for start in range(0, len(order), batch):
        picked = order[start : start + batch]
        placed = placement.place([rows[i]["doc_id"] for i in picked], dense[picked])
        by_shard: dict[int, list[EmbeddedChunk]] = {}
        for i, shards in zip(picked, placed, strict=True):
            row = rows[i]
            item = EmbeddedChunk(
                chunk=Chunk(chunk_id=row["chunk_id"], doc_id=row["doc_id"], text=row["text"], title=row["title"]),
                vector=[float(x) for x in dense[i]],
                sparse=encoder.document(row["embedding_text"]),
            )
            for shard in shards:
                by_shard.setdefault(shard, []).append(item)
        for shard, items in by_shard.items():
            for part in range(0, len(items), 2000):
                stores[shard].upsert(items[part : part + 2000])
    for store in stores:
        store.flush()
    stored = sum(store.count() for store in stores)
    indexed_s = time.perf_counter() - started
    merged = stats.merged()

    workflow = build_query_workflow(
        settings,
        embed=by_question.__getitem__,
        lexical=lambda text: encoder.query(text, merged),
        stores=stores.__getitem__,
        make_generator=ExtractiveGenerator,
        centroids=cache,
    )
    results: dict[str, Any] = {
        "chunks": len(rows),
        "stored_rows": stored,
        "storage": round(stored / len(rows), 3),
        "shards": args.shards,
        "index_s": round(indexed_s, 1),
        "bm25_documents": merged.documents,
        "modes": {},
    }
    for mode in ("dense", "hybrid"):
        totals = {name: {"recall": 0.0, "probes": 0, "min": 1.0} for name, _ in [*RULES, ("all shards", None)]}
        slowest: dict[str, list[float]] = {name: [] for name in totals}
        work: dict[str, list[float]] = {name: [] for name in totals}
        for question in questions:
            embedded = json.loads(json.dumps(workflow.embed({"request": {"question": question, "mode": mode}})))
            step = {k: embedded[k] for k in ("request", "vector", "sparse")}

            def top(
                shards: list[int],
                name: str,
                request: dict[str, Any] = embedded["request"],
                step: Any = step,
                slowest: dict[str, list[float]] = slowest,
                work: dict[str, list[float]] = work,
            ) -> list[str]:
                # As the state machine runs it: only the Route stage's shards search, each told how many do.
                searched = [
                    {"shard": i, "status": "ok", **workflow.search({"shard": i, **step, "searched": shards})}
                    if i in shards
                    else {"shard": i, "status": "skipped"}
                    for i in range(args.shards)
                ]
                took = [float(r["took_ms"]) for r in searched if r["status"] == "ok"]
                # Branches run in parallel in AWS: the slowest searched shard is the query's search latency.
                slowest[name].append(max(took))
                work[name].append(sum(took))
                fused = workflow.fuse_generate({"request": {**request, "generate": False}, "shards": searched})
                return [h["chunk_id"] for h in fused["hits"]][:TOP_K]

            reference = set(top(list(range(args.shards)), "all shards"))
            totals["all shards"]["recall"] += 1.0
            totals["all shards"]["probes"] += args.shards
            for name, probe in RULES:
                request = {**embedded["request"], "probe": probe}
                route = workflow.route({"request": request, "vector": embedded["vector"]})
                found = len(reference & set(top(route["shards"], name))) / max(1, len(reference))
                totals[name]["recall"] += found
                totals[name]["probes"] += route["probed"]
                totals[name]["min"] = min(totals[name]["min"], found)
        n = len(questions)
        results["modes"][mode] = {
            name: {
                "relative_recall_at_10": round(t["recall"] / n, 4),
                "min_recall": round(t["min"], 2),
                "avg_probes": round(t["probes"] / n, 3),
                "shard_calls_saved": round(1 - t["probes"] / (n * args.shards), 3),
                "slowest_shard_search_p50_ms": round(float(np.percentile(slowest[name], 50)), 2),
                "search_work_p50_ms": round(float(np.percentile(work[name], 50)), 2),
            }
            for name, t in totals.items()
        }
    results["took_s"] = round(time.perf_counter() - started, 1)
    for store in stores:
        store.close()
    print(f"SciFact, {len(rows)} chunks, {args.shards} shards: storage x{results['storage']}, {len(questions)} queries")
    print(
        "| mode | probing | relative recall@10 | worst query | shards probed | shard calls saved "
        "| slowest shard search p50 | search work p50 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, table in results["modes"].items():
        for name, r in table.items():
            print(
                f"| {mode} | {name} | {r['relative_recall_at_10']:.3f} | {r['min_recall']:.1f} | {r['avg_probes']:.2f}"
                f" | {r['shard_calls_saved']:.0%} | {r['slowest_shard_search_p50_ms']:.1f} ms"
                f" | {r['search_work_p50_ms']:.1f} ms |"
            )
    print(f"index {results['index_s']} s, total {results['took_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
