"""The long run of the model-based ingestion test (``tests/integration/test_ingestion_model.py``): many more
random sequences of uploads, deletes, duplicate and out-of-order deliveries, injected failures and crashes than
``make test`` runs. Prints one JSON line: examples, steps per example, outcome and wall time."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    environment = {
        **os.environ,
        "SHARDRAG_MODEL_EXAMPLES": str(args.examples),
        "SHARDRAG_MODEL_STEPS": str(args.steps),
    }
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout=0",
            "tests/integration/test_ingestion_model.py",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )
    tail = [line for line in run.stdout.splitlines() if line.strip()][-1:] or [""]
    print(
        json.dumps(
            {
                "examples": args.examples,
                "steps_per_example": args.steps,
                "passed": run.returncode == 0,
                "pytest": tail[0],
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    )
    if run.returncode != 0:
        sys.stderr.write(run.stdout[-20000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
