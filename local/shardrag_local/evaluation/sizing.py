"""A *projection* of latency and monthly AWS cost for a deployed ShardRAG, from the stage costs measured by an
evaluation run and public list prices. Every price and every assumption is a named constant below, so that a
reader can change one and re-run::

    python -m shardrag_local.evaluation.sizing bench/results/eval-scifact.json

Measured (from the evaluation JSON, the hybrid mode's run): the Embed, Route and FuseAndGenerate handlers' own
times (p50, p95). A hybrid query's dense feedback round (the Feedback state) is modelled as one opening-chunk read
and one shard search in sequence, at the assumed Milvus server time.
Assumed (not measurable here): a Milvus server's search time, Lambda / Step Functions / API Gateway overheads,
and the Milvus cluster size. Prices: us-east-1 on-demand list prices, x86 Lambda, no free tier.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECONDS_PER_MONTH = 30 * 24 * 3600
HOURS_PER_MONTH = 730

# -- list prices (us-east-1) ---------------------------------------------------------------------------------
LAMBDA_GB_S = 0.0000166667  # x86, per GB-second (first 6 billion GB-s a month)
LAMBDA_REQUEST = 0.20 / 1e6
SFN_EXPRESS_REQUEST = 1.00 / 1e6
SFN_EXPRESS_GB_S = 0.00001667  # per GB-second, first 1,000 GB-hours; billed in 100 ms and 64 MB increments
SFN_EXPRESS_MIN_GB = 0.064
SFN_BILLING_S = 0.1
APIGW_REST_REQUEST = 3.50 / 1e6  # first 333 million requests a month
EC2_HOURLY = {"r6i.xlarge": 0.252, "r6i.2xlarge": 0.504, "m6i.large": 0.096}  # on demand, Linux

# -- assumptions ---------------------------------------------------------------------------------------------
#: Lambda memory per function (MB). Embed gets 1,769 MB = one full vCPU (the one-thread embedding figure applies).
MEMORY_MB = {"embed": 1769, "route": 256, "shard_search": 512, "feedback": 1024, "fuse": 256}
#: Added to each handler's measured time: runtime + Powertools wrapper, billed per ms.
HANDLER_OVERHEAD_MS = 2.0
#: ShardSearch on a Milvus server: HNSW (M 16, ef 64) search of one shard of <= 12.5M 384-d vectors plus the
#: gRPC round trip inside the VPC. Not measured here (Milvus Lite is not a server); vendor benchmarks put
#: in-memory HNSW at 1-5 ms per query at these sizes.
SHARD_SEARCH_MS = {"p50": 8.0, "p95": 20.0}
#: Per Lambda task state in a synchronous Express execution (state transition + warm invoke), and API Gateway's
#: own added latency. Sequential tasks on the critical path: Embed, Route, ShardSearch (parallel), Feedback, Fuse.
SFN_TASK_OVERHEAD_MS = {"p50": 8.0, "p95": 20.0}
APIGW_OVERHEAD_MS = {"p50": 10.0, "p95": 25.0}
SEQUENTIAL_TASKS = 5
#: The Feedback state: reads the top documents' opening chunks, then searches every shard (concurrently): two
#: Milvus round trips in sequence, the second as slow as the slowest shard.
FEEDBACK_MS = {q: 2 * SHARD_SEARCH_MS[q] for q in ("p50", "p95")}
#: Bytes per chunk in memory on the Milvus nodes: 384 float32 (1,536 B) + HNSW links (M 16: ~256 B) + scalar
#: fields kept in memory (ids, doc id, metadata: ~300 B). Chunk text is memory-mapped from local disk.
BYTES_PER_CHUNK_IN_MEMORY = 1536 + 256 + 300
#: Usable share of a node's RAM for segments (the rest: OS, Milvus processes, growing segments, headroom).
USABLE_MEMORY = 0.6
#: A Milvus *standalone* node (etcd and object storage embedded) serves every shard's collection when they fit one
#: node; beyond that a distributed cluster adds coordinators, etcd and the message queue on three m6i.large.
DISTRIBUTED_FIXED_NODES = ("m6i.large", 3)


@dataclass(frozen=True)
class Scenario:
    chunks: int
    qps: float
    shards: int
    node_type: str

    @property
    def node_memory_gib(self) -> int:
        return {"r6i.xlarge": 32, "r6i.2xlarge": 64}[self.node_type]

    @property
    def nodes(self) -> int:
        """Query nodes needed to hold every shard in memory (one replica; at <= 100 qps a node is not CPU-bound)."""
        need = self.chunks * BYTES_PER_CHUNK_IN_MEMORY / (self.node_memory_gib * 2**30 * USABLE_MEMORY)
        return max(1, math.ceil(need))


SCENARIOS = [
    Scenario(1_000_000, 10, 4, "r6i.xlarge"),
    Scenario(1_000_000, 100, 4, "r6i.xlarge"),
    Scenario(100_000_000, 10, 8, "r6i.2xlarge"),
    Scenario(100_000_000, 100, 8, "r6i.2xlarge"),
]


def project(measured: dict[str, Any], scenario: Scenario) -> dict[str, Any]:
    """Per-query cost, monthly cost and end-to-end latency for one scenario."""
    stage_ms = {
        "embed": measured["embed"],
        "route": measured["route"],
        "shard_search": SHARD_SEARCH_MS,
        "feedback": FEEDBACK_MS,
        "fuse": measured["fuse"],
    }
    invocations = {"embed": 1, "route": 1, "shard_search": scenario.shards, "feedback": 1, "fuse": 1}
    gb_s = sum(
        invocations[s] * MEMORY_MB[s] / 1024 * math.ceil(stage_ms[s]["p50"] + HANDLER_OVERHEAD_MS) / 1000
        for s in stage_ms
    )
    lambda_cost = gb_s * LAMBDA_GB_S + sum(invocations.values()) * LAMBDA_REQUEST
    latency = {
        q: round(
            APIGW_OVERHEAD_MS[q]
            + SEQUENTIAL_TASKS * SFN_TASK_OVERHEAD_MS[q]
            + sum(stage_ms[s][q] + HANDLER_OVERHEAD_MS for s in stage_ms),
            0,
        )
        for q in ("p50", "p95")
    }
    sfn_seconds = math.ceil(latency["p50"] / 1000 / SFN_BILLING_S) * SFN_BILLING_S
    sfn_cost = SFN_EXPRESS_REQUEST + sfn_seconds * SFN_EXPRESS_MIN_GB * SFN_EXPRESS_GB_S
    per_query = lambda_cost + sfn_cost + APIGW_REST_REQUEST
    queries = scenario.qps * SECONDS_PER_MONTH
    milvus = scenario.nodes * EC2_HOURLY[scenario.node_type] * HOURS_PER_MONTH
    fixed_type, fixed_count = DISTRIBUTED_FIXED_NODES
    if scenario.nodes > 1:
        milvus += fixed_count * EC2_HOURLY[fixed_type] * HOURS_PER_MONTH
    monthly = {
        "lambda": lambda_cost * queries,
        "step_functions": sfn_cost * queries,
        "api_gateway": APIGW_REST_REQUEST * queries,
        "milvus": milvus,
    }
    return {
        "chunks": scenario.chunks,
        "qps": scenario.qps,
        "shards": scenario.shards,
        "milvus_nodes": f"{scenario.nodes} x {scenario.node_type}"
        + (f" + {fixed_count} x {fixed_type}" if scenario.nodes > 1 else " (standalone)"),
        "queries_per_month": int(queries),
        "per_query_usd_serverless": per_query,
        "monthly_usd": {k: round(v) for k, v in monthly.items()} | {"total": round(sum(monthly.values()))},
        "latency_ms": latency,
    }


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| chunks | qps | shards | Milvus nodes | queries / month | Lambda | Step Functions | API Gateway | Milvus "
        "| **total / month** | e2e p50 / p95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["monthly_usd"]
        lines.append(
            f"| {r['chunks']:,} | {r['qps']:g} | {r['shards']} | {r['milvus_nodes']} "
            f"| {r['queries_per_month'] / 1e6:.1f} M "
            f"| ${m['lambda']:,} | ${m['step_functions']:,} | ${m['api_gateway']:,} | ${m['milvus']:,} "
            f"| **${m['total']:,}** | {r['latency_ms']['p50']:.0f} / {r['latency_ms']['p95']:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def measured_latency(report: dict[str, Any], system: str = "shardrag_api_hybrid") -> dict[str, Any]:
    """The stage latencies of one API system of an evaluation report (hybrid, the default mode, when present;
    reports from before per-mode runs hold one system's stages directly)."""
    latency: dict[str, Any] = report["latency_ms"]
    if "end_to_end_client" in latency:
        return latency
    chosen: dict[str, Any] = latency.get(system) or next(iter(latency.values()))
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "bench/results/eval-scifact.json")
    latency = measured_latency(json.loads(path.read_text()))
    rows = [project(latency, s) for s in SCENARIOS]
    print(render(rows))
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
