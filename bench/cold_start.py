"""Cold start of each query handler: a fresh interpreter imports the handler module (settings validated,
stages built, the model loaded for Embed) and serves its first event. Prints JSON.

Usage::

    python -m bench.cold_start [--runs 5]

``init_ms`` starts after the interpreter is up (Lambda's runtime start-up is not the project's to optimise).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time, importlib.util
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t1 = time.perf_counter()
class Ctx:
    function_name = "bench"; memory_limit_in_mb = 1024; aws_request_id = "r"; function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    def get_remaining_time_in_millis(self): return 10000
event = json.loads(sys.argv[2])
try:
    module.handler(event, Ctx())
except Exception as exc:
    print("first invocation failed:", type(exc).__name__, exc, file=sys.stderr)
t2 = time.perf_counter()
print(json.dumps({"init_ms": (t1 - t0) * 1000, "first_invoke_ms": (t2 - t1) * 1000}))
"""

REQUEST = {
    "question": "q",
    "top_k": 5,
    "candidates": 10,
    "generate": False,
    "filters": None,
    "filter_expr": "",
}
EVENTS = {
    "embed": {"request": {"question": "What causes ocean tides?", "generate": False}},
    "route": {"request": REQUEST, "vector": [0.05] * 384},
    "shard_search": {"shard": 0, "request": REQUEST, "vector": [0.05] * 384},
    "feedback": {
        "request": {**REQUEST, "mode": "hybrid", "feedback": True},
        "vector": [0.05] * 384,
        "shards": [{"shard": 0, "status": "ok", "hits": []}],
    },
    "fuse_generate": {
        "request": {**REQUEST, "generate": True},
        "shards": [{"shard": 0, "status": "ok", "hits": []}],
    },
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = {
        **os.environ,
        "SHARDRAG_DATA_DIR": tempfile.mkdtemp(prefix="shardrag-cold-"),
        "SHARDRAG_SETTINGS": json.dumps({"store": {"shard_count": 1}}),
        "SHARDRAG_MODEL_DIR": str(ROOT / "build" / "model"),
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    results = {}
    for name, event in EVENTS.items():
        rows = []
        for _ in range(args.runs):
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PROBE,
                    str(ROOT / "functions" / name / "handler.py"),
                    json.dumps(event),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results[name] = {
            "init_ms_p50": round(statistics.median(r["init_ms"] for r in rows), 1),
            "init_ms_max": round(max(r["init_ms"] for r in rows), 1),
            "first_invoke_ms_p50": round(statistics.median(r["first_invoke_ms"] for r in rows), 1),
        }
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps({"benchmark": "cold_start", "runs": args.runs, "handlers": results}))


if __name__ == "__main__":
    main()
