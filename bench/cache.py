"""Benchmark the answer cache locally: a repeated question (a hit) against its first asking (a miss).

A fresh local runtime with ``cache.answers`` on indexes the first ``--docs`` SciFact documents through the S3
event path, then asks ``--queries`` SciFact questions twice through the real state machine (hybrid retrieval,
an extractive answer): the first pass computes and caches each answer, the second is answered from the cache.
Reports p50/p95 of each pass and how many of the second pass were hits. Then checks that an upload which
changes an answer is reflected on the very next query (and that the query after it is a hit again). Prints one
JSON line.

Usage::

    python -m bench.cache [--docs 500] [--queries 100] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "scifact"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()

    os.environ.setdefault("SHARDRAG_MODEL_DIR", str(ROOT / "build" / "model"))
    os.environ["SHARDRAG_DATA_DIR"] = tempfile.mkdtemp(prefix="shardrag-bench-cache-")
    os.environ["SHARDRAG_SETTINGS"] = json.dumps({"store": {"shard_count": args.shards}, "cache": {"answers": True}})
    from shardrag_local.runtime import DOCUMENTS_BUCKET, LocalRuntime

    corpus = b"\n".join((DATASET / "corpus.jsonl").read_bytes().splitlines()[: args.docs]) + b"\n"
    questions = [json.loads(line)["text"] for line in (DATASET / "queries.jsonl").read_text().splitlines()]
    questions = questions[: args.queries]

    runtime = LocalRuntime(serve_aws=False)
    runtime.start()
    try:
        s3 = runtime.aws.client("s3")
        s3.put_object(Bucket=DOCUMENTS_BUCKET, Key="bench/scifact.jsonl", Body=corpus)
        if not runtime.ingestion.wait_idle(3600):
            raise SystemExit("ingestion did not finish")

        def ask(question: str) -> tuple[float, dict[str, Any]]:
            started = time.perf_counter()
            status, body = runtime.execute({"question": question})
            elapsed = (time.perf_counter() - started) * 1000
            if status != 200:
                raise SystemExit(f"query failed: {status} {body}")
            return elapsed, body

        ask("warm-up question about cells")  # the handlers' cold start is not a miss
        passes: list[dict[str, Any]] = []
        for name in ("first", "repeated"):
            latencies, outcomes = [], {"hit": 0, "miss": 0}
            for question in questions:
                elapsed, body = ask(question)
                latencies.append(elapsed)
                outcomes[body["cache"]] += 1
            passes.append(
                {
                    "pass": name,
                    "p50_ms": _percentile(latencies, 0.5),
                    "p95_ms": _percentile(latencies, 0.95),
                    "mean_ms": round(statistics.fmean(latencies), 2),
                    "cache": outcomes,
                }
            )

        # An upload that changes the answer is reflected on the very next query.
        tag = uuid.uuid4().hex[:8]
        key, question = f"bench/heron-{tag}.txt", f"Where does the heron Zorblat{tag} spend the winter?"
        s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=key, Body=f"The heron Zorblat{tag} winters in Antarctica.".encode())
        runtime.ingestion.wait_idle(600)
        before = [ask(question)[1] for _ in range(2)]
        s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=key, Body=f"The heron Zorblat{tag} winters in Portugal.".encode())
        runtime.ingestion.wait_idle(600)
        after = [ask(question)[1] for _ in range(2)]
        reflected = {
            "before_upload": [b["cache"] for b in before],
            "after_upload": [b["cache"] for b in after],
            "next_query_cites_the_new_text": "Portugal" in (after[0]["answer"] or "")
            and "Antarctica" not in json.dumps(after[0]["citations"]),
        }
    finally:
        runtime.stop()
    first, repeated = passes
    print(
        json.dumps(
            {
                "benchmark": "answer_cache",
                "docs": args.docs,
                "queries": len(questions),
                "shards": args.shards,
                "cores": os.cpu_count(),
                "passes": passes,
                "p50_miss_over_hit": round(first["p50_ms"] / max(repeated["p50_ms"], 0.01), 1),
                "upload_reflected": reflected,
            }
        )
    )


if __name__ == "__main__":
    main()
