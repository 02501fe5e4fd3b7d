"""What the dense feedback round costs a running local runtime (``make dev``, any corpus; SciFact for the figures in
BENCHMARKS.md), measured from outside, side by side in one run.

Usage::

    python -m bench.feedback_cost [--seconds 20] [--clients 1,2,4,8] [--rounds 2] [--out FILE]

Two measurements, each alternating ``"feedback": false`` and the default (feedback on) so that both see the same
machine state:

- **CPU per answered query**, at the highest client count: the CPU time (``/proc/<pid>/stat``) the query workers
  and the shard servers spent during the run, divided by the answers (200s) it produced;
- **what the time budget does under load**: at each client count, answers per second, client-side p50/p95, and how
  many answers had their round (``ok``) or skipped it (``skipped``: past ``retrieval.feedback.budget_ms``).

Questions are SciFact's claims (``../shared/datasets/scifact/queries.jsonl``), ``top_k`` 5, generation on, as
acceptance I-load-50 sends them. Prints JSON and, with ``--out``, writes it.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

QUERIES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "scifact" / "queries.jsonl"


def _processes() -> dict[int, str]:
    """The runtime's processes by role: query workers (multiprocessing children) and shard servers."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    roles: dict[int, str] = {}
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if "shardrag_local.shard_servers" in args:
            roles[int(pid)] = "shards"
        elif "spawn_main" in args:
            roles[int(pid)] = "workers"
        elif "shardrag_local.cli serve" in args:
            roles[int(pid)] = "front"
    return roles


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(questions: list[str], clients: int, seconds: float, feedback: bool | None) -> dict[str, Any]:
    statuses: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        connection = http.client.HTTPConnection("127.0.0.1", 8080, timeout=120)
        while time.monotonic() < stop:
            body: dict[str, Any] = {"question": rnd.choice(questions), "top_k": 5}
            if feedback is not None:
                body["feedback"] = feedback
            started = time.perf_counter()
            connection.request("POST", "/query", json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = json.loads(response.read())
            with lock:
                if response.status == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                    statuses[(payload.get("feedback") or {}).get("status", "none")] += 1
                else:
                    statuses[str(response.status)] += 1

    roles = _processes()
    before = {pid: _cpu_s(pid) for pid in roles}
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu: dict[str, float] = collections.defaultdict(float)
    for pid, role in roles.items():
        cpu[role] += _cpu_s(pid) - before[pid]
    answered = len(latencies)
    latencies.sort()
    return {
        "clients": clients,
        "feedback": "default" if feedback is None else feedback,
        "answered_per_s": round(answered / seconds, 2),
        "p50_ms": round(latencies[answered // 2], 1) if answered else None,
        "p95_ms": round(latencies[int(answered * 0.95)], 1) if answered else None,
        "statuses": dict(sorted(statuses.items())),
        "cpu_ms_per_answer": {role: round(1000 * s / max(answered, 1), 1) for role, s in sorted(cpu.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    questions = [json.loads(line)["text"] for line in QUERIES.read_text().splitlines() if line.strip()]
    for _ in range(5):  # warm every handler and shard before measuring
        _load(questions, 1, 1.0, None)
    runs = []
    for _ in range(args.rounds):
        for clients in (int(c) for c in args.clients.split(",")):
            for feedback in (False, None):
                run = _load(questions, clients, args.seconds, feedback)
                print(json.dumps(run), flush=True)
                runs.append(run)
    result = {
        "command": "python -m bench.feedback_cost "
        + " ".join(
            f"--{k} {v}" for k, v in (("seconds", args.seconds), ("clients", args.clients), ("rounds", args.rounds))
        ),
        "runs": runs,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
