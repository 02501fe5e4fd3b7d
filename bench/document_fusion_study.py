"""Offline study: hybrid fusion when only a lexical unit's first row carries its BM25 weights, and a chunk's BM25
side is its document's best lexical candidate (``ConvexFuser``/``RrfFuser`` with ``lexical_scope`` "document").

Same cache, corpora, BM25 and references as ``bench/retrieval_study.py`` (whose ``Scorer`` it reuses): the BM25
mode ranks the same units (a unit's other rows never scored above it, they only crowded the candidates), so BM25
nDCG@10 is the retrieval study's; what changes is which rows the lexical top ``depth`` holds (``depth`` distinct
units, not the tied rows of a few) and how fusion reads them. Fusion is the shipped code, on the global top
``depth`` of each modality. Selection rule as in the retrieval study: the worst case over corpora of (hybrid -
reference fusion), among BM25 settings within 0.005 of bm25s on every corpus; the per-chunk scope of the shipped
fuser is measured beside it, over the same first-row-only lists and over every row carrying the weights.

Run: ``make retrieval-study`` (both studies) or ``python -m bench.document_fusion_study``; JSON and Markdown in
``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shardrag.config import Bm25Settings, EmbeddingSettings
from shardrag.embedding.onnx import OnnxEmbedder
from shardrag.fusion import ConvexFuser, Fuser, RrfFuser
from shardrag_local.evaluation.baselines import Bm25Retriever

from bench.retrieval_study import (
    CORPORA,
    RESULTS,
    ROOT,
    Matrix,
    Scorer,
    _progress,
    _rounded,
    _worst,
    load_corpus,
    reference_fusion,
)

#: BM25 settings measured: the shipped one, and the ones within 0.005 of bm25s everywhere in the retrieval study.
BM25 = ((1.5, 0.75), (1.2, 0.9), (2.0, 0.9), (1.5, 0.9))
ALPHAS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65)
DEPTHS = (50, 100, 200)
RRF_KS = (10, 20, 60)


def first_rows_only(scorer: Scorer, lexical: Matrix) -> Matrix:
    """``lexical`` with every row but each unit's first zeroed (what the store holds: the others carry no weights)."""
    first = np.zeros(len(scorer.chunk_unit), dtype=bool)
    seen: set[int] = set()
    for chunk, unit in enumerate(scorer.chunk_unit.tolist()):
        if unit not in seen:
            seen.add(unit)
            first[chunk] = True
    return np.where(first[None, :], lexical, 0.0)


def fusers() -> list[tuple[dict[str, Any], Fuser]]:
    out: list[tuple[dict[str, Any], Fuser]] = []
    for depth in DEPTHS:
        for how in ("zscore", "minmax"):
            for alpha in ALPHAS:
                spec = {"method": f"convex {how}", "weight": alpha, "depth": depth}
                out.append((spec, ConvexFuser(alpha, depth=depth, normalisation=how)))  # type: ignore[arg-type]
        for k in RRF_KS:
            out.append(({"method": "RRF", "weight": k, "depth": depth}, RrfFuser(k, depth=depth)))
    return out


def study(names: Sequence[str], window: int) -> dict[str, Any]:
    embedder = OnnxEmbedder.from_settings(EmbeddingSettings(model_dir=str(ROOT / "build" / "model")))
    scorers: dict[str, Scorer] = {}
    references: dict[str, dict[str, float]] = {}
    for name, folder, split in CORPORA:
        if name not in names:
            continue
        corpus = load_corpus(name, folder, split, embedder)
        scorer = scorers[name] = Scorer(corpus, window)
        bm25s = Bm25Retriever()
        bm25s.index(corpus.dataset.corpus)
        references[name] = reference_fusion(scorer, bm25s)
        _progress(f"{name}: references {_rounded(references[name])}")
    bm25s_bar = {n: references[n]["bm25s"] for n in scorers}
    fusion_bar = {n: references[n]["reference_fusion"] for n in scorers}
    rows: list[dict[str, Any]] = []
    bm25_rows: list[dict[str, Any]] = []
    for k1, b in BM25:
        every = {n: s.bm25_scores(k1, b, s.lexical.avgdl) for n, s in scorers.items()}
        first = {n: first_rows_only(s, every[n]) for n, s in scorers.items()}
        values = {n: s.ndcg(s.chunk_ranking(first[n], positive_only=True)) for n, s in scorers.items()}
        bm25_rows.append({"k1": k1, "b": b, "ndcg@10": _rounded(values), "worst_vs_bm25s": _worst(values, bm25s_bar)})
        for depth in DEPTHS:
            lists = {n: s.shard_results(first[n], depth) for n, s in scorers.items()}
            every_lists = {n: s.shard_results(every[n], depth) for n, s in scorers.items()}
            for spec, fuser in fusers():
                if spec["depth"] != depth:
                    continue
                fused = {n: s.fused(lists[n], fuser) for n, s in scorers.items()}
                rows.append(
                    {
                        "k1": k1,
                        "b": b,
                        **spec,
                        "rows": "first",
                        "scope": "document",
                        "ndcg@10": _rounded(fused),
                        "worst_vs_reference": _worst(fused, fusion_bar),
                    }
                )
            # The per-chunk scope, for comparison, at the shipped fusion's shape.
            for how in ("zscore", "minmax") if depth == 100 else ():
                for alpha in (0.5, 0.6):
                    chunk_fuser = ConvexFuser(alpha, depth=depth, normalisation=how, lexical_scope="chunk")  # type: ignore[arg-type]
                    for label, source in (("first", lists), ("every", every_lists)):
                        fused = {n: s.fused(source[n], chunk_fuser) for n, s in scorers.items()}
                        rows.append(
                            {
                                "k1": k1,
                                "b": b,
                                "method": f"convex {how}",
                                "weight": alpha,
                                "depth": depth,
                                "rows": label,
                                "scope": "chunk",
                                "ndcg@10": _rounded(fused),
                                "worst_vs_reference": _worst(fused, fusion_bar),
                            }
                        )
            _progress(f"k1 {k1} b {b} depth {depth}: done")
    return {
        "window": window,
        "references": {n: _rounded(r) for n, r in references.items()},
        "bm25": bm25_rows,
        "fusion": rows,
    }


def markdown(result: dict[str, Any], command: str, commit: str) -> str:
    names = list(result["references"])
    head = " | ".join(names)
    lines = [
        f"Command: `{command}` (commit {commit}). nDCG@10; lexical units of at most {result['window']} BM25 terms; "
        "only a unit's first row carries its weights unless the row says every.",
        "",
        f"| reference | {head} |",
        "|---|" + "---|" * len(names),
    ]
    for key in ("bm25s", "chunk_dense", "reference_fusion"):
        lines.append(f"| {key} | " + " | ".join(f"{result['references'][n][key]:.4f}" for n in names) + " |")
    lines += ["", f"| BM25 k1 | b | {head} | worst vs bm25s |", "|---|---|" + "---|" * (len(names) + 1)]
    for r in result["bm25"]:
        cells = " | ".join(f"{r['ndcg@10'][n]:.4f}" for n in names)
        lines.append(f"| {r['k1']} | {r['b']} | {cells} | {r['worst_vs_bm25s']:+.4f} |")
    lines += [
        "",
        "Fusion, best 40 by the worst margin over the reference fusion:",
        "",
        f"| k1 | b | method | weight / k | depth | rows | lexical scope | {head} | worst vs reference |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(names) + 1),
    ]
    ranked = sorted(result["fusion"], key=lambda r: -r["worst_vs_reference"])
    for r in ranked[:40]:
        cells = " | ".join(f"{r['ndcg@10'][n]:.4f}" for n in names)
        lines.append(
            f"| {r['k1']} | {r['b']} | {r['method']} | {r['weight']} | {r['depth']} | {r['rows']} | {r['scope']} | "
            f"{cells} | {r['worst_vs_reference']:+.4f} |"
        )
    lines += ["", "Best of each method and scope (any BM25 setting above, any weight and depth):", ""]
    lines += [f"| method | rows | lexical scope | k1 | b | weight / k | depth | {head} | worst vs reference |"]
    lines += ["|---|---|---|---|---|---|---|" + "---|" * (len(names) + 1)]
    seen: set[tuple[str, str, str]] = set()
    for r in ranked:
        key = (r["method"], r["rows"], r["scope"])
        if key in seen:
            continue
        seen.add(key)
        cells = " | ".join(f"{r['ndcg@10'][n]:.4f}" for n in names)
        lines.append(
            f"| {r['method']} | {r['rows']} | {r['scope']} | {r['k1']} | {r['b']} | {r['weight']} | {r['depth']} | "
            f"{cells} | {r['worst_vs_reference']:+.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.document_fusion_study", description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default=",".join(c[0] for c in CORPORA), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=RESULTS / "document_fusion_study.json")
    parser.add_argument("--window", type=int, default=Bm25Settings().window)
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.document_fusion_study", *given])
    started = time.perf_counter()
    result = study([n.strip() for n in args.corpora.split(",") if n.strip()], args.window)
    result["command"], result["commit"] = command, commit
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result, command, commit)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    # Last line: the whole result, which ``make bench`` (bench/run.py) records with its machine and commit.
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
