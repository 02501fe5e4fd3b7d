"""``make bench``: run every benchmark, one after another (never in parallel: they would measure each other),
keep each one's JSON under ``bench/results/`` with the machine and commit it ran on, then draw the figures
(``bench.figures``) from the results files. ``python -m bench.run reuse cache`` runs only those;
``python -m bench.run figures`` only draws."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

RUNS: dict[str, list[str]] = {
    "embedding": ["bench/embedding.py"],
    "search": ["-m", "bench.search", "--sizes", "1000,12500,50000,100000", "--index", "FLAT,IVF_FLAT,HNSW"],
    "e2e": ["-m", "bench.e2e", "--queries", "200"],
    "e2e-no-speedups": ["-m", "bench.e2e", "--queries", "200", "--no-speedups"],
    "e2e-bm25": ["-m", "bench.e2e", "--queries", "200", "--mode", "bm25"],
    "e2e-hybrid": ["-m", "bench.e2e", "--queries", "200", "--mode", "hybrid"],
    "cold_start": ["-m", "bench.cold_start", "--runs", "5"],
    "ingest": ["-m", "bench.ingest"],
    "shards": ["-m", "bench.shards", "--shards", "1,2,4,8", "--docs", "500", "--queries", "100"],
    "ingest-model": ["-m", "bench.ingest_model", "--examples", "500", "--steps", "40"],
    # e09a5fc: the runtime before shard processes, query workers and shedding (issue 12), measured in the same run.
    "load": ["-m", "bench.load", "--baseline", "e09a5fc"],
    # Retrieval defaults across the development corpora (offline, over cached embeddings; issue 14).
    "retrieval_study": ["-m", "bench.retrieval_study"],
    # The shipped design: a unit's weights on its first row, fusion by document (issue 14).
    "document_fusion_study": ["-m", "bench.document_fusion_study"],
    # Issue 15: re-upload with one paragraph edited against the first ingest (the acceptance check's document at
    # 2,900 paragraphs, the at 1,000), and the answer cache's hit against its miss.
    "reuse": ["-m", "bench.reuse", "--paragraphs", "1000,2900"],
    "cache": ["-m", "bench.cache", "--docs", "500", "--queries", "100"],
    # Issue 15: what a query's snapshot filter (atomic overwrites) costs a shard search, and the snapshot read.
    "visibility": ["-m", "bench.visibility"],
}


def _machine() -> dict[str, str]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "commit": commit.stdout.strip(),
    }


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    selected = sys.argv[1:] or [*RUNS, "figures"]
    machine = _machine()
    for name in selected:
        if name == "figures":
            from bench.figures import draw

            print(json.dumps({"figures": draw(RESULTS)}), flush=True)
            continue
        command = [sys.executable, *RUNS[name]]
        print(f"== {name}: {' '.join(RUNS[name])}", flush=True)
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True)
        text = out.stdout.strip()
        try:
            result = json.loads(text)
        except ValueError:  # scripts that stream a line per measurement end with the summary line
            result = json.loads(text.splitlines()[-1])
        record = {"command": "python " + " ".join(RUNS[name]), "machine": machine, "at": datetime.now(UTC).isoformat()}
        (RESULTS / f"{name}.json").write_text(json.dumps({**record, "result": result}, indent=2) + "\n")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
