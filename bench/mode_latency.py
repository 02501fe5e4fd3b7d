"""Latency of ``POST /query`` per retrieval mode against a running local API (``make dev``): the same questions
in each mode, answers not generated, medians and maxima in milliseconds. Prints one JSON line.

Usage::

    python -m bench.mode_latency [--api http://127.0.0.1:8080] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

QUESTIONS = ["granite harbor", "cancer cells", "vitamin D deficiency", "protein folding", "copper violet"]
MODES = ["bm25", "dense", "hybrid"]


def _query(api: str, mode: str, question: str) -> float:
    body = json.dumps({"question": question, "top_k": 5, "generate": False, "mode": mode}).encode()
    request = urllib.request.Request(f"{api}/query", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--api", default="http://127.0.0.1:8080")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for mode in MODES:  # warm each mode's path once
        _query(args.api, mode, "warm up")
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        times = [_query(args.api, mode, q) for q in QUESTIONS * args.repeat]
        out[mode] = {"p50_ms": round(statistics.median(times)), "max_ms": round(max(times)), "queries": len(times)}
    print(json.dumps({"benchmark": "mode_latency", **out}))


if __name__ == "__main__":
    main()
