"""One evaluation run: ingest through S3 once, query through the HTTP API in each retrieval mode, score every
mode and the baselines; optionally the same hybrid run on another shard count (in a subprocess)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from shardrag.request import MAX_TOP_K_IDS_ONLY, Mode
from shardrag.workflow import IDS_ONLY_MAX_HITS

from shardrag_local.evaluation.baselines import Bm25Retriever, ExactDenseRetriever
from shardrag_local.evaluation.consistency import compare_with_brute_force, read_back_chunks
from shardrag_local.evaluation.dataset import BeirDataset
from shardrag_local.evaluation.latency import summarize
from shardrag_local.evaluation.metrics import MetricSummary, evaluate
from shardrag_local.evaluation.system import PROJECT_ROOT, LocalSystem, QueryObservation
from shardrag_local.evaluation.targets import DatasetTargets, find_targets

log = logging.getLogger("shardrag.eval")

#: Retrieval modes of ``POST /query``, in the order a run evaluates them (the default ``--modes``).
MODES: tuple[str, ...] = get_args(Mode)
#: What ``--modes`` may also name: the hybrid first pass alone (``"feedback": false``), to measure dense feedback
#: against it side by side in one runtime.
HYBRID_FIRST_PASS = "hybrid-no-feedback"
EVAL_MODES: tuple[str, ...] = (*MODES, HYBRID_FIRST_PASS)
#: Cut-offs every system is scored at (the API reaches 100 documents with its ids-only top_k, see :func:`api_top_k`).
BASELINE_CUTOFFS = (10, 50, 100)
#: Hybrid on N hash shards must score within this of hybrid on another shard count (issue 7: 4 vs 1).
SHARD_PARITY = 0.003
EXACT = "exact_dense_whole_docs"
BM25 = "bm25s"


def system_name(mode: str) -> str:
    return f"shardrag_api_{mode}"


def api_top_k(mode: str, shards: int) -> int:
    """Chunk hits asked of the API per query: the ids-only maximum (200), or less where the state payload bound
    (``IDS_ONLY_MAX_HITS`` over shards x ranked lists; hybrid returns two lists per shard) is lower.

    200 chunk hits give enough distinct documents for document-level recall@100 (SciFact: ~2.2 chunks a document).
    """
    lists = 2 if mode.startswith("hybrid") else 1
    return min(MAX_TOP_K_IDS_ONLY, IDS_ONLY_MAX_HITS // (shards * lists))


def parse_modes(text: str) -> tuple[str, ...]:
    """``dense,bm25`` -> ``("dense", "bm25")``: known modes, each once, in the order given."""
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in modes if m not in EVAL_MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a comma-separated subset of {','.join(EVAL_MODES)} (got {text!r})")
    return modes


@dataclass(frozen=True)
class EvalOptions:
    dataset: Path
    split: str = "test"
    shards: int = 4
    modes: tuple[str, ...] = MODES
    #: A cap below the payload bound of :func:`api_top_k` (when the API's bound is wrong for the corpus's ids).
    max_top_k: int | None = None
    limit_queries: int | None = None
    docs_per_file: int = 250
    warmup_queries: int = 5
    baselines: bool = True
    #: The exact-dense baseline (whole documents embedded again) among the baselines; bm25s alone is cheap.
    dense_baseline: bool = True
    #: Brute-force comparison of the dense ranking (only when ``dense`` is among the modes).
    sharding_check: bool = True
    data_dir: Path | None = None
    #: Extra runtime settings (e.g. ``{"ingestion": {"chunk_size": 128}}``) for sweeps; the shard count wins.
    settings: dict[str, Any] | None = None
    #: A targets file (default: beside the dataset, else the project's for that dataset and split).
    targets: Path | None = None


@dataclass
class ModeRun:
    """The measured queries of one mode, and how busy the machine was around them."""

    mode: str
    top_k: int
    observations: list[QueryObservation] = field(default_factory=list)
    load_before: float = 0.0
    load_after: float = 0.0


def _progress(message: str) -> None:
    print(f"[eval] {message}", file=sys.stderr, flush=True)


def _query_mode(system: LocalSystem, dataset: BeirDataset, mode: str, top_k: int, warmup: int) -> ModeRun:
    # Warm-up requests (cold handler state, first search of each shard in this mode) are not measured.
    for question in list(dataset.queries.values())[:warmup]:
        system.query("warmup", question, top_k=top_k, mode=mode)
    # Other work on the machine inflates every timing: record how busy it was around the measured queries.
    run = ModeRun(mode, top_k, load_before=os.getloadavg()[0])
    started = time.perf_counter()
    for n, (query_id, question) in enumerate(dataset.queries.items(), start=1):
        run.observations.append(system.query(query_id, question, top_k=top_k, mode=mode))
        if n % 50 == 0 or n == len(dataset.queries):
            _progress(f"{mode}: queried {n}/{len(dataset.queries)} ({time.perf_counter() - started:.0f} s)")
    run.load_after = os.getloadavg()[0]
    degraded = sum(o.degraded for o in run.observations)
    if degraded:
        raise RuntimeError(f"{degraded} {mode} queries came back degraded: a shard failed during the run")
    fell_back = sum(o.feedback == "failed" for o in run.observations)
    if fell_back:
        # The first pass answered those: the figure would not be the feedback's.
        raise RuntimeError(f"{fell_back} {mode} queries lost their dense feedback round (status failed)")
    return run


def run_evaluation(options: EvalOptions) -> dict[str, Any]:
    """Everything the report needs, as a JSON-able dict (no machine or command: the caller adds those)."""
    dataset = BeirDataset.load(options.dataset, split=options.split, limit_queries=options.limit_queries)
    _progress(
        f"{dataset.name}/{options.split}: {len(dataset.corpus)} documents, {len(dataset.queries)} queries, "
        f"{sum(len(j) for j in dataset.qrels.values())} judgments; {options.shards} shards; "
        f"modes {','.join(options.modes)}"
    )
    result: dict[str, Any] = {
        "dataset": {
            "name": dataset.name,
            "path": str(options.dataset),
            "split": options.split,
            "documents": len(dataset.corpus),
            "queries": len(dataset.queries),
            "judgments": sum(len(j) for j in dataset.qrels.values()),
            "sha256": dataset.checksums,
        },
    }
    top_k = {
        mode: min(api_top_k(mode, options.shards), options.max_top_k or MAX_TOP_K_IDS_ONLY) for mode in options.modes
    }
    systems: dict[str, MetricSummary] = {}
    descriptions: dict[str, str] = {}
    runs: dict[str, ModeRun] = {}
    with LocalSystem(shards=options.shards, data_dir=options.data_dir, settings=options.settings) as system:
        assert system.runtime is not None
        settings = system.runtime.settings
        retrieval = settings.retrieval
        result["settings"] = {
            "shards": settings.store.shard_count,
            "index": settings.store.index.type,
            "chunk_size_tokens": settings.ingestion.chunk_size,
            "chunk_overlap_tokens": settings.ingestion.chunk_overlap,
            "modes": list(options.modes),
            "top_k": top_k,
            "bm25": {"k1": retrieval.bm25.k1, "b": retrieval.bm25.b, "avgdl": retrieval.bm25.avgdl},
            "fusion": {
                "kind": retrieval.fusion.kind,
                "alpha": retrieval.fusion.alpha,
                "normalisation": retrieval.fusion.normalisation,
                "depth": retrieval.fusion.depth,
            },
            "docs_per_file": options.docs_per_file,
            "data_dir": str(system.data_dir),
        }
        parts = dataset.write_jsonl_parts(system.data_dir / "upload", docs_per_file=options.docs_per_file)
        ingest = system.ingest(parts, progress=_progress)
        result["ingest"] = ingest.as_dict()
        if ingest.failed_files or ingest.documents != len(dataset.corpus):
            raise RuntimeError(f"ingestion incomplete: {ingest.as_dict()}")

        common = (
            f"{settings.store.shard_count} hash shards, {settings.store.index.type}, "
            f"{settings.ingestion.chunk_size}-token chunks ({settings.ingestion.chunk_overlap} overlap)"
        )
        how = {
            "dense": "dense",
            "bm25": f"BM25 (k1={retrieval.bm25.k1}, b={retrieval.bm25.b}, sparse vectors)",
            "hybrid": (
                f"hybrid ({retrieval.fusion.kind} {retrieval.fusion.normalisation} fusion, "
                f"alpha {retrieval.fusion.alpha}, top {retrieval.fusion.depth} per modality"
                + (
                    f"; dense feedback from the top {retrieval.feedback.documents} documents, weight "
                    f"{retrieval.feedback.weight})"
                    if retrieval.feedback.enabled
                    else ")"
                )
            ),
            HYBRID_FIRST_PASS: (
                f"hybrid, first pass only (request feedback:false; {retrieval.fusion.kind} "
                f"{retrieval.fusion.normalisation} fusion, alpha {retrieval.fusion.alpha})"
            ),
        }
        for mode in options.modes:
            run = runs[mode] = _query_mode(system, dataset, mode, top_k[mode], options.warmup_queries)
            name = system_name(mode)
            systems[name] = evaluate(
                {o.query_id: o.documents for o in run.observations}, dataset.qrels, recall_cutoffs=BASELINE_CUTOFFS
            )
            descriptions[name] = (
                f"POST /query mode {how[mode]}, generate:false, top_k {run.top_k} chunk hits -> documents at their "
                f"best chunk's rank; {common}"
            )
            _progress(f"{name}: nDCG@10 {systems[name].ndcg_at_10:.4f}")
        result["latency_ms"] = {system_name(m): summarize(r.observations) for m, r in runs.items()}
        # How many answers had their dense feedback round (``ok``), and how many did not (``skipped``: past the
        # feedback's time budget; ``empty``: nothing to feed back); ``none``: no round (not hybrid, or opted out).
        result["feedback"] = {
            system_name(m): dict(sorted(Counter(o.feedback or "none" for o in r.observations).items()))
            for m, r in runs.items()
        }
        result["load_average_1min"] = {
            system_name(m): {"before_queries": r.load_before, "after_queries": r.load_after} for m, r in runs.items()
        }

        from shardrag import services

        embedder = services.embedder()
        if options.sharding_check and "dense" in runs:
            _progress("sharding check (dense): reading every chunk back from the shards")
            dense_observations = runs["dense"].observations
            # Through the shard servers: each holds its data directory's lock while the runtime runs.
            chunks = read_back_chunks(system.runtime.shard_servers.served_endpoints())
            # One query at a time, exactly as the Embed handler embeds it.
            vectors = {o.query_id: embedder.embed([dataset.queries[o.query_id]])[0] for o in dense_observations}
            check = compare_with_brute_force({o.query_id: o.chunk_ids for o in dense_observations}, vectors, chunks)
            result["sharding_check"] = check.as_dict()

        if options.baselines and options.dense_baseline:
            _progress("baseline: exact cosine over whole documents")
            dense = ExactDenseRetriever(embedder)
            started = time.perf_counter()
            dense.index(dataset.corpus)
            embed_s = time.perf_counter() - started
            result["raw_embedding"] = {
                "texts": len(dataset.corpus),
                "seconds": round(embed_s, 1),
                "texts_per_s": round(len(dataset.corpus) / embed_s, 1),
                "what": "whole documents (<= 256 tokens) embedded in batches, same process, no ingestion path",
            }
            systems[EXACT] = evaluate(
                dense.search(dataset.queries, 100), dataset.qrels, recall_cutoffs=BASELINE_CUTOFFS
            )
            descriptions[EXACT] = dense.description
        if options.baselines:
            _progress("baseline: BM25")
            bm25 = Bm25Retriever()
            bm25.index(dataset.corpus)
            systems[BM25] = evaluate(bm25.search(dataset.queries, 100), dataset.qrels, recall_cutoffs=BASELINE_CUTOFFS)
            descriptions[BM25] = bm25.description

    result["systems"] = {name: {"description": descriptions[name], **s.as_dict()} for name, s in systems.items()}
    result["ratios"] = ratios(systems)
    table, origin = find_targets(options.dataset, dataset.name, options.split, options.targets)
    result["targets_source"] = {"file": origin, "source": table.source} if origin else None
    result["targets"] = targets(systems, table)
    if "sharding_check" in result:
        check_result = result["sharding_check"]
        result["targets"]["dense: hash-sharded top-10 == single exact index (overlap 100%)"] = {
            "value": check_result["mean_overlap"],
            "met": bool(check_result["passed"]),
        }
    short = {m: sum(1 for o in r.observations if len(o.documents) < 100) for m, r in runs.items()}
    result["notes"] = [
        "Each mode is asked for "
        + ", ".join(f"top_k={top_k[m]} ({m})" for m in runs)
        + " chunk hits (ids-only mode: the API's payload bound over "
        f"{options.shards} shards"
        + (f", capped at {options.max_top_k}" if options.max_top_k else "")
        + "); documents are ranked by their best chunk, so the first 100 distinct documents "
        "are exactly the top 100 by best chunk. Queries that returned fewer than 100 distinct documents (scored on "
        "what came back): " + ", ".join(f"{m} {short[m]}/{len(r.observations)}" for m, r in runs.items()) + ".",
    ]
    for mode, counts in result.get("feedback", {}).items():
        if counts.get("skipped"):
            result["notes"].append(
                f"{mode}: {counts['skipped']} queries skipped their dense feedback round (past "
                "retrieval.feedback.budget_ms: a loaded machine); their answers are the first pass's."
            )
    if "dense" not in runs and options.sharding_check:
        result["notes"].append("No sharding check: it compares the dense ranking, and dense was not evaluated.")
    return result


def ratios(systems: Mapping[str, MetricSummary]) -> dict[str, dict[str, float]]:
    """Each API system's figure over each baseline's, metric by metric (only metrics both report)."""
    out: dict[str, dict[str, float]] = {}
    for mode in EVAL_MODES:
        if system_name(mode) not in systems:
            continue
        api = systems[system_name(mode)].as_dict()
        for name in (EXACT, BM25):
            if name not in systems:
                continue
            other = systems[name].as_dict()
            out[f"{system_name(mode)}/{name}"] = {
                metric: round(float(api[metric]) / float(other[metric]), 4)
                for metric in ("ndcg@10", "recall@10", "recall@50", "recall@100", "mrr@10")
                if metric in api and metric in other and float(other[metric])
            }
    return out


def targets(systems: Mapping[str, MetricSummary], table: DatasetTargets | None = None) -> dict[str, dict[str, Any]]:
    """The dataset's nDCG@10 targets for the modes evaluated, and bm25 held to the bm25s baseline of the same run
    (which needs that baseline). ``table`` None: no absolute target (a dataset nobody set targets for)."""
    table = table or DatasetTargets()
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        name = system_name(mode)
        if name not in systems:
            continue
        value = systems[name].ndcg_at_10
        checks: list[tuple[str, float]] = []
        if mode in table.ndcg_at_10:
            checks.append((f"{name} ndcg@10 >= {table.ndcg_at_10[mode]}", table.ndcg_at_10[mode]))
        if mode == "bm25" and BM25 in systems:
            margin = table.bm25_margin
            checks.append((f"{name} ndcg@10 >= {BM25} ndcg@10 - {margin}", systems[BM25].ndcg_at_10 - margin))
        for label, threshold in checks:
            out[label] = {"value": round(value, 4), "threshold": round(threshold, 4), "met": value >= threshold}
    return out


def comparison_command(options: EvalOptions, shards: int, out: Path) -> list[str]:
    """The same CLI, hybrid only, on ``shards`` shards, nothing but the scores (a fresh runtime in a new process:
    the local runtime's AWS mock is process-global)."""
    command = [sys.executable, "-m", "shardrag_local.evaluation", "--dataset", str(options.dataset)]
    command += ["--split", options.split, "--shards", str(shards), "--modes", "hybrid"]
    command += ["--docs-per-file", str(options.docs_per_file), "--no-baselines", "--no-sharding-check"]
    command += ["--out", str(out)]
    if options.max_top_k is not None:
        command += ["--max-top-k", str(options.max_top_k)]
    if options.limit_queries is not None:
        command += ["--limit-queries", str(options.limit_queries)]
    if options.settings:
        command += ["--settings", json.dumps(options.settings)]
    if options.targets is not None:
        command += ["--targets", str(options.targets)]
    return command


def run_shard_comparison(options: EvalOptions, shards: int, out: Path) -> dict[str, Any]:
    """Run :func:`comparison_command` (its progress on this stderr) and return its JSON report."""
    _progress(f"shard comparison: a fresh runtime on {shards} shard(s), hybrid only")
    subprocess.run(comparison_command(options, shards, out), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, check=True)
    report: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return report


def add_shard_comparison(report: dict[str, Any], other: Mapping[str, Any], output: str) -> None:
    """Hybrid nDCG@10 at both shard counts into ``report``, with the parity target."""
    name = system_name("hybrid")
    main_shards, other_shards = int(report["settings"]["shards"]), int(other["settings"]["shards"])
    main_ndcg = float(report["systems"][name]["ndcg@10"])
    other_ndcg = float(other["systems"][name]["ndcg@10"])
    diff = main_ndcg - other_ndcg
    report["shard_comparison"] = {
        "system": name,
        "runs": [{"shards": main_shards, "ndcg@10": main_ndcg}, {"shards": other_shards, "ndcg@10": other_ndcg}],
        "diff": round(diff, 4),
        "other_run": {
            "output": output,
            "ingest": other.get("ingest"),
            "latency_ms": (other.get("latency_ms") or {}).get(name),
            **{k: other["systems"][name][k] for k in ("recall@10", "recall@100", "mrr@10")},
        },
    }
    report["targets"][f"{name} ndcg@10: |{main_shards} shards - {other_shards} shard(s)| <= {SHARD_PARITY}"] = {
        "value": round(abs(diff), 4),
        "threshold": SHARD_PARITY,
        "met": abs(diff) <= SHARD_PARITY,
    }
