"""``python -m shardrag_local.evaluation`` / ``shardrag eval``: the command line of an evaluation run.

Only argparse at import time: ``shardrag`` builds this parser for every command, so the heavy imports wait
until an evaluation actually runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from shardrag_local.evaluation.report import PROJECT_ROOT

DEFAULT_DATASET = PROJECT_ROOT.parent / "shared" / "datasets" / "scifact"
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="BEIR folder (default: %(default)s)")
    parser.add_argument("--split", default="test", help="qrels split (default: %(default)s)")
    parser.add_argument("--shards", type=int, default=4, help="hash shards of the fresh runtime (default: 4)")
    parser.add_argument(
        "--modes",
        type=_modes,
        default=None,
        help=(
            "retrieval modes to evaluate through the API, comma-separated (default: dense,bm25,hybrid; also "
            "hybrid-no-feedback: hybrid without its dense feedback round, side by side)"
        ),
    )
    parser.add_argument(
        "--compare-shards",
        type=int,
        default=None,
        metavar="N",
        help="afterwards, ingest again into a fresh runtime with N shards and compare hybrid nDCG@10",
    )
    parser.add_argument(
        "--max-top-k",
        type=int,
        default=None,
        metavar="K",
        help="ask the API for at most K chunk hits per query in every mode (default: the ids-only payload bound)",
    )
    parser.add_argument("--limit-queries", type=int, default=None, help="only the first N judged queries")
    parser.add_argument("--docs-per-file", type=int, default=250, help="documents per uploaded JSON Lines file")
    parser.add_argument("--data-dir", type=Path, default=None, help="fresh data directory (default: a temp dir)")
    parser.add_argument(
        "--settings",
        type=json.loads,
        default=None,
        help='extra runtime settings as JSON, e.g. \'{"ingestion": {"chunk_size": 128}}\'',
    )
    parser.add_argument(
        "--targets",
        type=Path,
        default=None,
        help="JSON file of this dataset's targets (default: shardrag-targets.json beside the dataset, else the "
        "project's bench/targets/<dataset>.<split>.json; none: only BM25 against bm25s)",
    )
    parser.add_argument("--no-baselines", action="store_true", help="skip exact dense and BM25")
    parser.add_argument(
        "--no-dense-baseline", action="store_true", help="skip exact dense only (bm25s, which is cheap, still runs)"
    )
    parser.add_argument(
        "--no-sharding-check", action="store_true", help="skip the brute-force comparison of the dense ranking"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: bench/results/eval-<name>.json)")
    parser.add_argument(
        "--update-benchmarks", action="store_true", help="write the generated tables into BENCHMARKS.md"
    )


def _modes(text: str) -> tuple[str, ...]:
    # Called only when an evaluation's arguments are parsed, so the runner's imports cost nothing elsewhere.
    from shardrag_local.evaluation.runner import parse_modes

    try:
        return parse_modes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from shardrag_local.evaluation.report import render_markdown, stamp, update_benchmarks
    from shardrag_local.evaluation.runner import (
        MODES,
        EvalOptions,
        add_shard_comparison,
        run_evaluation,
        run_shard_comparison,
    )

    if args.data_dir is not None and args.data_dir.exists() and any(args.data_dir.iterdir()):
        raise SystemExit(f"--data-dir {args.data_dir} is not empty: the evaluation needs a fresh data directory")
    modes = args.modes or MODES
    if args.compare_shards is not None and (args.compare_shards < 1 or "hybrid" not in modes):
        raise SystemExit("--compare-shards needs a shard count >= 1 and hybrid among --modes")
    options = EvalOptions(
        dataset=args.dataset,
        split=args.split,
        shards=args.shards,
        modes=modes,
        max_top_k=args.max_top_k,
        limit_queries=args.limit_queries,
        docs_per_file=args.docs_per_file,
        baselines=not args.no_baselines,
        dense_baseline=not args.no_dense_baseline,
        sharding_check=not args.no_sharding_check,
        data_dir=args.data_dir,
        settings=args.settings,
        targets=args.targets,
    )
    command = "python -m shardrag_local.evaluation " + shlex.join(argv)
    report = stamp(run_evaluation(options), command.strip())
    out = args.out or RESULTS_DIR / f"eval-{report['dataset']['name']}.json"
    report["output"] = _display(out)
    if args.compare_shards is not None:
        other_out = out.with_name(f"{out.stem}-shards{args.compare_shards}.json")
        other_out.parent.mkdir(parents=True, exist_ok=True)
        add_shard_comparison(report, run_shard_comparison(options, args.compare_shards, other_out), _display(other_out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown = render_markdown(report)
    out.with_suffix(".md").write_text(markdown, encoding="utf-8")
    if args.update_benchmarks:
        update_benchmarks(markdown, report["dataset"]["name"])
    print(markdown)
    for target, outcome in report["targets"].items():
        if not outcome["met"]:
            print(f"target not met: {target} (measured {outcome['value']})", file=sys.stderr)
    print(f"report: {out}", file=sys.stderr)
    # Figures are reported, never gated on: a missed target is a finding, not a failed command.
    return 0


def _display(path: Path) -> str:
    """A path relative to the project root when it is inside it (what the published report shows)."""
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m shardrag_local.evaluation",
        description="Retrieval quality and latency of ShardRAG on a BEIR folder, through S3 ingestion and the "
        "HTTP API of a fresh local runtime in each retrieval mode (dense, bm25, hybrid), with exact-dense and BM25 "
        "baselines in the same run.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv), argv)
