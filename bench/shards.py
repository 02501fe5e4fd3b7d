"""End-to-end query latency as the shard count grows (1, 2, 4, 8 shards), same corpus each time. Prints JSON.

Usage::

    python -m bench.shards [--shards 1,2,4,8] [--docs 1000] [--queries 100]

For each shard count a fresh process (moto's mock is process-global) starts a local runtime on a fresh data
directory, ingests the first ``--docs`` SciFact documents through S3 (JSON Lines -> SQS -> ingest Lambda), and
sends ``--queries`` SciFact queries to ``POST /query`` (``generate: false``, top_k 10) after 10 warm-up requests.
Without the SciFact folder it falls back to the sample corpus. Reported per shard count: client end to end,
the slowest shard's search, the orchestration overhead (p50 / p95) and ingestion throughput.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "datasets" / "scifact"
FALLBACK = ["What causes ocean tides?", "How do honeybees communicate?", "What is ShardRAG?", "How do volcanoes form?"]


def _worker(shards: int, docs: int, queries: int) -> dict[str, Any]:
    from shardrag_local.evaluation.dataset import BeirDataset
    from shardrag_local.evaluation.latency import summarize
    from shardrag_local.evaluation.system import LocalSystem

    with LocalSystem(shards=shards) as system:
        assert system.runtime is not None
        if (SCIFACT / "corpus.jsonl").exists():
            dataset = BeirDataset.load(SCIFACT)
            subset = BeirDataset(dataset.name, dataset.root, dataset.split, dataset.corpus[:docs], {}, {}, {})
            parts = subset.write_jsonl_parts(Path(tempfile.mkdtemp(prefix="shardrag-shards-")), docs_per_file=250)
            ingest = system.ingest(parts).as_dict()
            questions = list(dataset.queries.values())
            corpus = f"first {len(subset.corpus)} SciFact documents"
        else:
            chunks = system.runtime.ensure_sample_corpus()
            ingest = {"chunks": chunks}
            questions = FALLBACK
            corpus = "sample corpus"
        for i in range(10):
            system.query("warmup", questions[i % len(questions)], top_k=10)
        observations = [system.query(str(i), questions[i % len(questions)], top_k=10) for i in range(queries)]
        rows = [s["chunks"] for s in system.runtime.shard_status()]
    latency = summarize(observations)
    return {
        "shards": shards,
        "corpus": corpus,
        "rows_per_shard": rows,
        "ingest": ingest,
        "e2e_ms": latency["end_to_end_client"],
        "search_slowest_shard_ms": latency["search"],
        "overhead_ms": latency["overhead"],
        "embed_ms": latency["embed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", default="1,2,4,8", help="comma-separated shard counts")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.docs, args.queries)))
        return
    runs = []
    for count in [int(c) for c in args.shards.split(",")]:
        command = [sys.executable, "-m", "bench.shards", "--worker", str(count)]
        command += ["--docs", str(args.docs), "--queries", str(args.queries)]
        # One shard count at a time: runs side by side would measure each other.
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(run)
        print(json.dumps(run), flush=True)
    base = runs[0]["e2e_ms"]["p50"]
    summary = {
        "benchmark": "e2e_by_shard_count",
        "docs": args.docs,
        "queries": args.queries,
        "table": [
            {
                "shards": r["shards"],
                "rows_per_shard_max": max(r["rows_per_shard"]),
                "e2e_p50_ms": r["e2e_ms"]["p50"],
                "e2e_p95_ms": r["e2e_ms"]["p95"],
                "search_p50_ms": r["search_slowest_shard_ms"]["p50"],
                "overhead_p50_ms": r["overhead_ms"]["p50"],
                "e2e_p50_vs_first": round(r["e2e_ms"]["p50"] / base, 2),
                "ingest_chunks_per_s": r["ingest"].get("chunks_per_s"),
            }
            for r in runs
        ],
        "runs": runs,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
