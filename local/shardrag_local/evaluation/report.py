"""Where a run's figures go: JSON under ``bench/results/`` and a generated Markdown section in BENCHMARKS.md,
each with the exact command, the machine and the commit."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def machine() -> dict[str, str]:
    """CPU, cores, memory, Python and the versions of the packages on the measured path."""
    cpu = platform.processor()
    memory = ""
    for line in _read_lines(Path("/proc/cpuinfo")):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in _read_lines(Path("/proc/meminfo")):
        if line.startswith("MemTotal"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
            break
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "memory": memory, "python": platform.python_version()}
    for package in ("onnxruntime", "pymilvus", "milvus-lite", "moto", "bm25s"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "absent"
    return info


def commit() -> str:
    """The commit the run measured, marked ``-dirty`` when tracked files differed from it."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=PROJECT_ROOT, check=False)
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def stamp(result: dict[str, Any], command: str) -> dict[str, Any]:
    return {"command": command, "machine": machine(), "commit": commit(), "at": datetime.now(UTC).isoformat(), **result}


def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _ms(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The generated part of BENCHMARKS.md for one dataset (tables only; the prose around it is hand-written)."""
    ds = report["dataset"]
    m = report["machine"]
    lines = [
        f"`{report['command']}` — commit `{report['commit']}`, {report['at'][:10]}, {m['cpu']} ({m['cores']} cores, "
        f"{m['memory']}), Python {m['python']}, onnxruntime {m['onnxruntime']}, pymilvus {m['pymilvus']}, "
        f"milvus-lite {m['milvus-lite']}, bm25s {m['bm25s']}. Raw: `{report.get('output', '')}`.",
        "",
        f"{ds['name']} {ds['split']}: {ds['documents']:,} documents, {ds['queries']} queries, "
        f"{ds['judgments']} judgments. Document level (a document ranks where its best chunk ranks).",
        "",
        "| system | nDCG@10 | recall@10 | recall@50 | recall@100 | MRR@10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["systems"].items():
        lines.append(
            f"| **{name}** — {s['description']} | {_fmt(s.get('ndcg@10'))} | {_fmt(s.get('recall@10'))} | "
            f"{_fmt(s.get('recall@50'))} | {_fmt(s.get('recall@100'))} | {_fmt(s.get('mrr@10'))} |"
        )
    if report.get("ratios"):
        lines += ["", "| ratio | nDCG@10 | recall@10 | recall@50 | recall@100 | MRR@10 |", "|---|---|---|---|---|---|"]
        for name, r in report["ratios"].items():
            lines.append(
                f"| {name} | {_fmt(r.get('ndcg@10'))} | {_fmt(r.get('recall@10'))} | {_fmt(r.get('recall@50'))} | "
                f"{_fmt(r.get('recall@100'))} | "
                f"{_fmt(r.get('mrr@10'))} |"
            )
    lines += ["", *[f"- {note}" for note in report.get("notes", [])]]
    origin = report.get("targets_source")
    if origin:
        lines.append(f"- targets of {ds['name']} {ds['split']} from `{origin['file']}`: {origin['source']}")
    elif "targets_source" in report:
        lines.append(f"- no targets file for {ds['name']} {ds['split']}: only BM25 against bm25s is checked")
    for target, outcome in report.get("targets", {}).items():
        threshold = f" (threshold {outcome['threshold']})" if "threshold" in outcome else ""
        lines.append(f"- target {target}: {outcome['value']}{threshold} — **{'met' if outcome['met'] else 'NOT met'}**")
    if check := report.get("sharding_check"):
        lines.append(
            f"- sharding check of the dense mode ({check['method']}, {check['chunks']:,} chunks): top-{check['k']} "
            f"overlap mean {check['mean_overlap']:.4f}, min {check['min_overlap']:.4f}; identical order in "
            f"{check['identical_order']}/{check['queries']} queries, {check['differ_only_by_ties']} differ only "
            f"among tied scores, {len(check['mismatches'])} real mismatches."
        )
    if comparison := report.get("shard_comparison"):
        at = ", ".join(
            f"{r['ndcg@10']:.4f} on {r['shards']} shard{'s' if r['shards'] != 1 else ''}" for r in comparison["runs"]
        )
        other = comparison["other_run"]
        lines.append(
            f"- shard count ({comparison['system']}, same corpus ingested into a second fresh runtime): nDCG@10 "
            f"{at}; difference {comparison['diff']:+.4f}. Raw: `{other['output']}`."
        )
    lines += _latency_table(report)
    ing = report.get("ingest")
    if ing:
        lines += [
            "",
            f"Ingestion through S3 → SQS → ingest Lambda: {ing['documents']:,} documents → {ing['chunks']:,} chunks "
            f"in {ing['seconds']} s ({ing['documents_per_s']} documents/s, {ing['chunks_per_s']} chunks/s; "
            f"{ing['files']} JSON Lines files).",
        ]
        if raw := report.get("raw_embedding"):
            lines[-1] += (
                f" Raw embedding in the same run (the exact baseline's whole documents): {raw['texts_per_s']} texts/s."
            )
    return "\n".join(lines) + "\n"


_STAGES = {
    "embed": "embed",
    "route": "route",
    "search": "search (slowest shard)",
    "fuse": "fuse",
    "total": "workflow total",
    "end_to_end_client": "**end to end (client)**",
    "overhead": "orchestration + HTTP overhead",
}


def _latency_table(report: dict[str, Any]) -> list[str]:
    """One column per API system (p50 / p95 ms), one row per stage and per shard."""
    latency: dict[str, Any] = report.get("latency_ms") or {}
    if "end_to_end_client" in latency:  # a report from before per-mode runs: one dense system
        latency = {"shardrag_api_dense": latency}
    if not latency:
        return []
    names = list(latency)
    n = max(lat["end_to_end_client"].get("n", 0) for lat in latency.values())
    loads = report.get("load_average_1min") or {}
    load_text = "; ".join(
        f"{name} {load['before_queries']:.1f} before / {load['after_queries']:.1f} after"
        for name, load in loads.items()
        if isinstance(load, dict)
    )
    lines = [
        "",
        f"Latency, p50 / p95 ms over the {n} measured queries of each mode (after warm-up; `timings_ms` from the "
        "workflow, end to end measured by the HTTP client"
        + (f"; 1-minute load average {load_text}" if load_text else "")
        + "):",
        "",
        "| stage | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def cell(p: dict[str, Any] | None) -> str:
        p = p or {}
        return f"{_ms(p.get('p50'))} / {_ms(p.get('p95'))}"

    for key, label in _STAGES.items():
        lines.append(f"| {label} | " + " | ".join(cell(latency[name].get(key)) for name in names) + " |")
    shards = sorted({s for lat in latency.values() for s in lat.get("per_shard_search", {})}, key=int)
    for shard in shards:
        lines.append(
            f"| shard {shard} search | "
            + " | ".join(cell(latency[name].get("per_shard_search", {}).get(shard)) for name in names)
            + " |"
        )
    return lines


def update_benchmarks(markdown: str, name: str, path: Path = PROJECT_ROOT / "BENCHMARKS.md") -> None:
    """Replace this dataset's generated block in BENCHMARKS.md (between markers), or append it at the end."""
    begin, end = f"<!-- eval:{name}:begin (generated by make eval) -->", f"<!-- eval:{name}:end -->"
    block = f"{begin}\n{markdown}{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + f"\n\n## Retrieval quality and latency on {name} (`make eval`)\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
