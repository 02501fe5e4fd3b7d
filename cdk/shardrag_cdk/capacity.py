"""The API stage's throttle and the query functions' reserved concurrency, sized together.

An execution that the stage admits invokes Embed, Route and FuseAndGenerate once each, ShardSearch once per
shard, all at the same time, and (a hybrid query with dense feedback) Feedback once. Past a function's reserved
concurrency Lambda refuses a synchronous invoke with ``TooManyRequestsException``; the workflow retries that
briefly and then sheds the request as ``Overloaded`` (429), never as a degraded answer
(``statemachines/query.asl.json``) — except at Feedback, whose failures, throttling included, are caught and
answered from the first pass: a throttled Feedback quietly loses the second round. For it to come to none of
these, the stage, which answers 429 *before* an execution starts, must be the tighter limit:

    parallel_f x (burst + rate x p99_f) <= reserved_f        for every query function f with reserved concurrency

- ``parallel_f``: invocations of f one execution runs at once (ShardSearch: the shard count; the others: 1 —
  Feedback searches the shards again from threads inside its one invocation, not through ShardSearch);
- ``burst``: requests the stage admits at once (its token bucket), which can reach the same stage together;
- ``rate x p99_f``: Little's law, the steady flow of admitted executions that is inside f at any moment, with
  ``p99_f`` (``deployment.functions.<f>.p99_ms``) the function's p99 duration: measure it (CloudWatch
  ``Duration`` p99) and keep it in ``cdk.json`` beside the reserved concurrency it sizes.

A function without reserved concurrency draws on the account's unreserved pool and is not checked here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from shardrag_cdk.layout import QUERY_FUNCTION_NAMES, FunctionName

#: The functions of the query workflow (ingestion is not behind the API).
QUERY_FUNCTIONS: Final[tuple[FunctionName, ...]] = QUERY_FUNCTION_NAMES
#: p99 durations (ms) when ``cdk.json`` gives none. Embed and Route: local p95s (BENCHMARKS.md) with a wide
#: margin for cold-ish containers; ShardSearch: a Milvus server's tail plus the VPC round trip (assumed, not
#: measured here); Feedback: two Milvus round trips one after the other (the opening chunks' vectors, then one
#: dense search of every shard at once, as slow as the slowest), so twice ShardSearch's (assumed);
#: FuseAndGenerate: the generator's answer dominates (a Bedrock model, several seconds).
DEFAULT_P99_MS: Final[dict[FunctionName, int]] = {
    "embed": 250,
    "route": 50,
    "shard_search": 500,
    "feedback": 1000,
    "fuse_generate": 8000,
}


@dataclass(frozen=True)
class Demand:
    function: FunctionName
    parallel: int
    needed: int
    reserved: int | None

    @property
    def fits(self) -> bool:
        return self.reserved is None or self.needed <= self.reserved


def parallel_invocations(function: FunctionName, shard_count: int) -> int:
    return shard_count if function == "shard_search" else 1


def concurrency_needed(*, rate: float, burst: int, p99_s: float, parallel: int) -> int:
    """Concurrent invocations of one function that the stage's admitted traffic can require at once."""
    return math.ceil(parallel * (burst + rate * p99_s))


def demands(
    *,
    rate: float,
    burst: int,
    shard_count: int,
    p99_ms: dict[FunctionName, int],
    reserved: dict[FunctionName, int | None],
) -> list[Demand]:
    out = []
    for function in QUERY_FUNCTIONS:
        parallel = parallel_invocations(function, shard_count)
        needed = concurrency_needed(rate=rate, burst=burst, p99_s=p99_ms[function] / 1000, parallel=parallel)
        out.append(Demand(function, parallel, needed, reserved[function]))
    return out
