"""End-to-end local query latency through the HTTP API, and the orchestration overhead. Prints JSON.

Usage::

    python -m bench.e2e [--shards 4] [--queries 200] [--no-speedups] [--mode dense|bm25|hybrid]

Each request is ``POST /query`` with ``generate: false``, ``top_k`` 10 and ``--mode`` (default dense) against
the local runtime (moto's Step Functions engine running ``statemachines/query.asl.json`` with the real handlers,
Milvus Lite shards holding the sample corpus).
Overhead per request = client-measured end-to-end minus the handlers' own times on the critical path
(embed + route + slowest shard search + fuse). ``--no-speedups`` runs the engine as moto ships it (definition
re-parsed and a boto3 client built per task), for a side-by-side ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

SCIFACT_QUERIES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "scifact" / "queries.jsonl"
FALLBACK = [
    "What causes ocean tides?",
    "How do honeybees communicate?",
    "What is ShardRAG?",
    "How do volcanoes form?",
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[int(q * (len(ordered) - 1))], 2)


def _questions(n: int) -> list[str]:
    if SCIFACT_QUERIES.exists():
        rows = [json.loads(line)["text"] for line in SCIFACT_QUERIES.read_text().splitlines() if line.strip()]
    else:
        rows = FALLBACK
    return [rows[i % len(rows)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-speedups", action="store_true")
    parser.add_argument("--mode", choices=("dense", "bm25", "hybrid"), default="dense", help="retrieval mode")
    args = parser.parse_args()

    os.environ["SHARDRAG_DATA_DIR"] = tempfile.mkdtemp(prefix="shardrag-bench-")
    os.environ["SHARDRAG_SETTINGS"] = json.dumps({"store": {"shard_count": args.shards}})
    from shardrag_local.api_server import ApiServer
    from shardrag_local.runtime import LocalRuntime

    runtime = LocalRuntime(serve_aws=False)
    runtime.aws.engine_speedups = not args.no_speedups
    runtime.start()
    runtime.ensure_sample_corpus()
    server = ApiServer(runtime, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/query"

    def ask(question: str) -> tuple[float, dict[str, Any]]:
        body = json.dumps({"question": question, "generate": False, "top_k": 10, "mode": args.mode}).encode()
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        return (time.perf_counter() - started) * 1000, payload

    for question in _questions(10):
        ask(question)
    e2e, handlers, overhead, stages = [], [], [], {k: [] for k in ("embed", "route", "search", "fuse")}
    for question in _questions(args.queries):
        elapsed, payload = ask(question)
        timings = payload["timings_ms"]
        critical = sum(float(timings[k]) for k in stages)
        for key in stages:
            stages[key].append(float(timings[key]))
        e2e.append(elapsed)
        handlers.append(critical)
        overhead.append(elapsed - critical)
    server.shutdown()
    runtime.stop()
    print(
        json.dumps(
            {
                "benchmark": "e2e_local_query",
                "shards": args.shards,
                "queries": args.queries,
                "mode": args.mode,
                "engine_speedups": not args.no_speedups,
                "e2e_ms": {
                    "p50": _pct(e2e, 0.5),
                    "p95": _pct(e2e, 0.95),
                    "mean": round(statistics.mean(e2e), 2),
                },
                "handlers_critical_path_ms": {"p50": _pct(handlers, 0.5), "p95": _pct(handlers, 0.95)},
                "overhead_ms": {"p50": _pct(overhead, 0.5), "p95": _pct(overhead, 0.95)},
                "stage_p50_ms": {k: _pct(v, 0.5) for k, v in stages.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
