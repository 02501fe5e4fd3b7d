"""Figures for BENCHMARKS.md, drawn from the results files already in ``bench/results/`` (no benchmark re-runs):

* ``search.png`` — one shard's search latency (p50, p95) against the rows it holds, per index type
  (``search.json``);
* ``centroid_routing.png`` — relative recall@10 of centroid routing against the shards probed per query, per
  placement (``centroid_study.json``);
* ``load.png`` — answered requests per second and latency (p50, p95) against concurrent clients, this release and
  the baseline measured in the same run (``load.json``).

Each figure's caption names the results file, its command and the commit it ran on. ``make bench`` draws them
after the runs; ``python -m bench.figures`` draws them alone. Prints one JSON line (the files written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _source(record: dict[str, Any], name: str) -> str:
    """``file: command @ commit`` for a caption."""
    command = record.get("command", "")
    commit = record.get("machine", {}).get("commit", "")
    return f"bench/results/{name}: {command}" + (f" @ {commit}" if commit else "")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt

    return plt


def search_figure(out: Path) -> Path | None:
    record = _load("search.json")
    if record is None:
        return None
    plt = _pyplot()
    rows = record["result"]["results"]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index in dict.fromkeys(r["index"] for r in rows):
        points = sorted((r["rows"], r["p50_ms"], r["p95_ms"]) for r in rows if r["index"] == index)
        xs = [p[0] for p in points]
        line = axis.plot(xs, [p[1] for p in points], marker="o", label=f"{index} p50")[0]
        axis.plot(xs, [p[2] for p in points], linestyle="--", color=line.get_color(), label=f"{index} p95")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("rows in the shard")
    axis.set_ylabel("search latency (ms)")
    axis.set_title("One Milvus Lite shard: search latency against its size")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, ncol=3)
    figure.text(0.01, 0.01, _source(record, "search.json"), fontsize=6)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "search.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def centroid_figure(out: Path) -> Path | None:
    record = _load("centroid_study.json")
    if record is None:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    # The study's headline table: fixed probes for each placement ...
    for placement in dict.fromkeys(r["placement"] for r in record["issue_table"]):
        points = sorted((r["avg_probes"], r["recall"]) for r in record["issue_table"] if r["placement"] == placement)
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{placement}, m shards")
    # ... and the chosen placement's curve: adaptive probing (margin, cap) and fixed m beyond 4.
    curve = record["curve"]
    for cap in ("cap 4", "cap 8"):
        points = sorted((r["avg_probes"], r["recall"]) for r in curve if str(r["probing"]).endswith(cap))
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=f"copies 0.06, adaptive, {cap}")
    fixed = sorted((r["avg_probes"], r["recall"]) for r in curve if str(r["probing"]).startswith("m="))
    axis.plot([p[0] for p in fixed], [p[1] for p in fixed], linestyle=":", color="grey", label="copies 0.06, m shards")
    default = next((r for r in curve if r["probing"] == "adaptive 0.16 cap 4"), None)
    if default is not None:
        axis.annotate(
            f"default: {default['avg_probes']:.2f} shards, {default['recall']:.3f}",
            (default["avg_probes"], default["recall"]),
            xytext=(4.2, 0.86),
            arrowprops={"arrowstyle": "->"},
            fontsize=8,
        )
    axis.set_xlabel("shards probed per query (mean)")
    axis.set_ylabel("recall@10 relative to searching every shard")
    axis.set_title(f"Centroid routing on SciFact ({record['chunks']:,} chunks, {record['queries']} queries)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7)
    figure.text(0.01, 0.01, "bench/results/centroid_study.json: python -m bench.centroid_study", fontsize=6)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "centroid_routing.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def load_figure(out: Path) -> Path | None:
    record = _load("load.json")
    if record is None:
        return None
    plt = _pyplot()
    result = record["result"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for label, run in result.items():
        if not isinstance(run, dict) or "table" not in run:
            continue
        table = sorted(run["table"], key=lambda r: r["clients"])
        clients = [r["clients"] for r in table]
        name = "this release" if label == "this" else label
        left.plot(clients, [r["ok_per_s"] for r in table], marker="o", label=name)
        line = right.plot(clients, [r["p50_ms"] for r in table], marker="o", label=f"{name} p50")[0]
        right.plot(clients, [r["p95_ms"] for r in table], linestyle="--", color=line.get_color(), label=f"{name} p95")
    left.set_xlabel("concurrent clients")
    left.set_ylabel("answered (200) requests/s")
    left.set_title("Throughput")
    right.set_xlabel("concurrent clients")
    right.set_ylabel("latency of answered requests (ms)")
    right.set_yscale("log")
    right.set_title("Latency")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.text(0.01, 0.01, _source(record, "load.json"), fontsize=6)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path = out / "load.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def draw(out: Path = RESULTS) -> list[str]:
    """Every figure whose results file exists; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    drawn = [search_figure(out), centroid_figure(out), load_figure(out)]
    return [str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path) for path in drawn if path]


def main() -> None:
    print(json.dumps({"figures": draw()}))


if __name__ == "__main__":
    main()
