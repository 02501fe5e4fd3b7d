"""Latency summaries of the observed queries: per stage (the workflow's own ``timings_ms``) and end to end."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shardrag_local.evaluation.system import QueryObservation

#: Stages on the critical path of one query, as the workflow reports them (``search`` is the slowest shard).
STAGES = ("embed", "route", "search", "fuse", "total")


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 / p95 (linear interpolation between order statistics, numpy's default), mean and max, in ms."""
    if not values:
        return {}
    data = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(data, 50)), 2),
        "p95": round(float(np.percentile(data, 95)), 2),
        "mean": round(float(data.mean()), 2),
        "max": round(float(data.max()), 2),
        "n": len(values),
    }


def summarize(observations: Sequence[QueryObservation]) -> dict[str, Any]:
    """Per-stage and end-to-end percentiles; ``overhead`` is the client's time minus the handlers' critical path
    (embed + route + slowest shard + fuse): HTTP, Step Functions orchestration and payload (de)serialisation."""
    out: dict[str, Any] = {}
    for stage in STAGES:
        out[stage] = percentiles([o.timings_ms[stage] for o in observations if stage in o.timings_ms])
    out["end_to_end_client"] = percentiles([o.client_ms for o in observations])
    out["overhead"] = percentiles(
        [
            o.client_ms - sum(o.timings_ms.get(s, 0.0) for s in ("embed", "route", "search", "fuse"))
            for o in observations
        ]
    )
    shard_ids = sorted({s for o in observations for s in o.shard_ms}, key=int)
    out["per_shard_search"] = {
        s: percentiles([o.shard_ms[s] for o in observations if s in o.shard_ms]) for s in shard_ids
    }
    return out
