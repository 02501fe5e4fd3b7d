"""Centroid (Voronoi) routing on SciFact: how much recall each placement and probing rule keeps. Prints Markdown
tables, and JSON with ``--json``.

Usage::

    python -m bench.centroid_study [--cache /tmp/scifact_cache] [--shards 8] [--json out.json]

Inputs (a cache of the real Chunker at 128/32 tokens and the real model's embeddings): ``dense.npy`` (L2-normalised
chunk vectors), ``chunks.jsonl`` (``chunk_id``, ``doc_id`` per row, same order), ``queries.npy`` (normalised query
vectors). Search is exact (brute-force cosine), so every loss measured is routing's, not the index's.

Relative recall@10 of a query = |top 10 of the probed shards ∩ top 10 of all chunks| / 10; a chunk replicated on
several probed shards counts once. Document-level relative recall ranks documents by their best chunk instead.
Placements: the whole document by its mean chunk vector (all its chunks on one shard), each chunk by its own
vector, and each chunk also copied to every shard whose centroid is within a margin of its nearest. Probing: a
fixed number m of nearest shards, or adaptive (the nearest, plus every shard whose centroid is within a margin of
the best, capped). Margins are tuned on the even-numbered queries and checked on the odd-numbered ones.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from shardrag.centroids import CentroidSet

TOP_K = 10
GOAL_RECALL = 0.97
GOAL_PROBES = 3.0
GOAL_STORAGE = 1.5


@dataclass(frozen=True)
class Corpus:
    vectors: np.ndarray  # n x d, unit rows
    doc_index: np.ndarray  # n, int: which document each chunk belongs to
    doc_count: int
    queries: np.ndarray  # q x d, unit rows


@dataclass(frozen=True)
class Row:
    placement: str
    probing: str
    avg_probes: float
    max_probes: int
    recall: float
    recall_tune: float
    recall_check: float
    min_recall: float
    doc_recall: float
    storage: float
    rows_scanned: float  # fraction of all stored rows the probed shards hold, averaged over queries
    calls_saved: float
    size_max_over_mean: float
    size_min_over_mean: float


def load(cache: Path, wait_s: float) -> Corpus:
    """The cached corpus, waiting (polling every 30 s) for the embedding job to finish."""
    log = cache / "build.log"
    deadline = time.monotonic() + wait_s
    while "embedded in" not in (log.read_text() if log.exists() else ""):
        if time.monotonic() > deadline:
            raise SystemExit(f"{log} does not report 'embedded in' yet")
        time.sleep(30)
    vectors = np.load(cache / "dense.npy").astype(np.float32)
    doc_ids: list[str] = []
    with (cache / "chunks.jsonl").open() as handle:
        doc_ids.extend(json.loads(line)["doc_id"] for line in handle)
    if len(doc_ids) != vectors.shape[0]:
        raise SystemExit(f"{len(doc_ids)} chunk rows but {vectors.shape[0]} vectors")
    _, doc_index = np.unique(np.asarray(doc_ids), return_inverse=True)
    queries = np.load(cache / "queries.npy").astype(np.float32)
    return Corpus(vectors, doc_index.astype(np.int64), int(doc_index.max()) + 1, queries)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k highest scores (unordered), as a q x k array."""
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def top_docs(scores: np.ndarray, doc_index: np.ndarray, k: int) -> list[set[int]]:
    """Per query, the k documents with the highest best-chunk score."""
    out: list[set[int]] = []
    pool = min(scores.shape[1], 8 * k)
    candidates = top_k(scores, pool)
    for row, cand in zip(scores, candidates, strict=True):
        ranked = cand[np.argsort(-row[cand], kind="stable")]
        docs: list[int] = []
        for chunk in ranked:
            doc = int(doc_index[chunk])
            if doc not in docs:
                docs.append(doc)
                if len(docs) == k:
                    break
        out.append(set(docs))
    return out


def membership_of(placement: list[list[int]], shards: int) -> np.ndarray:
    """n x shards bool: which shards store each chunk."""
    member = np.zeros((len(placement), shards), dtype=bool)
    for row, stored in enumerate(placement):
        member[row, stored] = True
    return member


def probes_fixed(query_sim: np.ndarray, m: int) -> np.ndarray:
    order = np.argsort(-query_sim, axis=1, kind="stable")[:, :m]
    chosen = np.zeros_like(query_sim, dtype=bool)
    np.put_along_axis(chosen, order, True, axis=1)
    return chosen


def probes_adaptive(query_sim: np.ndarray, margin: float, cap: int, floor: int = 1) -> np.ndarray:
    """The same rule as :class:`shardrag.centroids.CentroidRouter` (``floor`` 1), vectorised."""
    order = np.argsort(-query_sim, axis=1, kind="stable")
    ranked = np.take_along_axis(query_sim, order, axis=1)
    keep = ranked >= ranked[:, :1] - np.float32(margin)
    keep[:, :floor] = True
    keep[:, cap:] = False
    chosen = np.zeros_like(query_sim, dtype=bool)
    np.put_along_axis(chosen, order, keep, axis=1)
    return chosen


class Evaluator:
    def __init__(self, corpus: Corpus, shards: int) -> None:
        self.corpus = corpus
        self.shards = shards
        self.scores = corpus.queries @ corpus.vectors.T  # q x n, exact cosine
        self.truth = [set(map(int, row)) for row in top_k(self.scores, TOP_K)]
        self.truth_docs = top_docs(self.scores, corpus.doc_index, TOP_K)
        self.tune = np.arange(len(self.truth)) % 2 == 0

    def evaluate(self, placement: str, probing: str, member: np.ndarray, chosen: np.ndarray) -> Row:
        """Recall of searching only the ``chosen`` (q x shards) shards of placement ``member`` (n x shards)."""
        visible = (chosen.astype(np.float32) @ member.T.astype(np.float32)) > 0  # q x n
        masked = np.where(visible, self.scores, -np.inf)
        found = top_k(masked, TOP_K)
        recall = np.array(
            [len(self.truth[q] & {int(c) for c in found[q] if visible[q, c]}) / TOP_K for q in range(len(self.truth))]
        )
        docs = top_docs(masked, self.corpus.doc_index, TOP_K)
        doc_recall = np.mean([len(a & b) / TOP_K for a, b in zip(docs, self.truth_docs, strict=True)])
        sizes = member.sum(axis=0).astype(np.float64)
        scanned = (chosen.astype(np.float64) @ sizes) / sizes.sum()
        probes = chosen.sum(axis=1)
        return Row(
            placement=placement,
            probing=probing,
            avg_probes=float(probes.mean()),
            max_probes=int(probes.max()),
            recall=float(recall.mean()),
            recall_tune=float(recall[self.tune].mean()),
            recall_check=float(recall[~self.tune].mean()),
            min_recall=float(recall.min()),
            doc_recall=float(doc_recall),
            storage=float(sizes.sum() / member.shape[0]),
            rows_scanned=float(scanned.mean()),
            calls_saved=float(1 - probes.mean() / self.shards),
            size_max_over_mean=float(sizes.max() / sizes.mean()),
            size_min_over_mean=float(sizes.min() / sizes.mean()),
        )


def doc_placement(corpus: Corpus, centroids: CentroidSet) -> np.ndarray:
    means = np.zeros((corpus.doc_count, corpus.vectors.shape[1]), dtype=np.float32)
    np.add.at(means, corpus.doc_index, corpus.vectors)
    shard_of_doc = centroids.nearest(means)
    member = np.zeros((corpus.vectors.shape[0], centroids.shard_count), dtype=bool)
    member[np.arange(corpus.vectors.shape[0]), shard_of_doc[corpus.doc_index]] = True
    return member


def train(corpus: Corpus, shards: int, *, sample: int, seed: int, iterations: int, balance: float) -> CentroidSet:
    rng = np.random.default_rng(seed)
    n = corpus.vectors.shape[0]
    rows = corpus.vectors if sample >= n else corpus.vectors[np.sort(rng.choice(n, size=sample, replace=False))]
    return CentroidSet.train(rows, shards, seed=seed, iterations=iterations, balance=balance)


@dataclass(frozen=True)
class Placement:
    margin: float
    max_replicas: int

    @property
    def label(self) -> str:
        return "chunk" if self.max_replicas == 1 else f"chunk, copies {self.margin:.2f} cap {self.max_replicas}"

    def member(self, centroids: CentroidSet, vectors: np.ndarray) -> np.ndarray:
        placed = centroids.place(vectors, replicate_margin=self.margin, max_replicas=self.max_replicas)
        return membership_of(placed, centroids.shard_count)


@dataclass(frozen=True)
class Probing:
    """``margin`` None: the ``cap`` nearest shards; otherwise adaptive, at least ``floor``, at most ``cap``."""

    cap: int
    margin: float | None = None
    floor: int = 1

    @property
    def label(self) -> str:
        if self.margin is None:
            return f"m={self.cap}"
        floor = f" floor {self.floor}" if self.floor > 1 else ""
        return f"adaptive {self.margin:.2f} cap {self.cap}{floor}"

    def chosen(self, query_sim: np.ndarray) -> np.ndarray:
        if self.margin is None:
            return probes_fixed(query_sim, self.cap)
        return probes_adaptive(query_sim, self.margin, self.cap, self.floor)


#: The defaults this study recommends (see the report in the module docstring of shardrag.centroids).
DEFAULT_PLACEMENT = Placement(margin=0.06, max_replicas=2)
DEFAULT_PROBING = Probing(cap=4, margin=0.16)
DEFAULT_BALANCE = 0.05


def meets(row: Row, recall: float) -> bool:
    return recall >= GOAL_RECALL and row.avg_probes <= GOAL_PROBES and row.storage <= GOAL_STORAGE


def table(rows: Iterable[Row], title: str) -> str:
    head = (
        f"\n### {title}\n\n| placement | probing | avg probes | max | calls saved | recall@10 | tune / check | "
        "min | doc recall@10 | rows scanned | storage | shard size max/min over mean |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r.placement} | {r.probing} | {r.avg_probes:.2f} | {r.max_probes} | {r.calls_saved:.0%} | {r.recall:.3f} | "
        f"{r.recall_tune:.3f} / {r.recall_check:.3f} | {r.min_recall:.1f} | {r.doc_recall:.3f} | "
        f"{r.rows_scanned:.1%} | "
        f"x{r.storage:.2f} | {r.size_max_over_mean:.2f} / {r.size_min_over_mean:.2f} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/scifact_cache"))
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--sample", type=int, default=8192, help="training rows (the whole corpus if larger)")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-s", type=float, default=3600)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    corpus = load(args.cache, args.wait_s)
    ev = Evaluator(corpus, args.shards)
    n = corpus.vectors.shape[0]
    print(f"{n} chunks, {corpus.doc_count} documents, {len(ev.truth)} queries, {args.shards} shards")
    out: dict[str, Any] = {"chunks": n, "documents": corpus.doc_count, "queries": len(ev.truth), "args": str(args)}

    started = time.perf_counter()
    centroids = train(corpus, args.shards, sample=args.sample, seed=args.seed, iterations=args.iterations, balance=0)
    print(f"trained on {centroids.trained_on} rows in {time.perf_counter() - started:.2f} s")
    query_sim = centroids.similarities(corpus.queries)
    fixed = [Probing(cap=m) for m in (1, 2, 3, 4)]

    # 1. The issue's table: three placements x fixed probes.
    base = [
        ("document by mean", doc_placement(corpus, centroids)),
        ("chunk", Placement(0.0, 1).member(centroids, corpus.vectors)),
        ("chunk + copies within 0.06", Placement(0.06, args.shards).member(centroids, corpus.vectors)),
    ]
    issue = [ev.evaluate(name, p.label, member, p.chosen(query_sim)) for name, member in base for p in fixed]
    print(table(issue, "Placements x fixed probes (the issue's table)"))

    # 2. Replication margin x cap x probing rule; margins judged on the tuning half only.
    placements = [Placement(0.0, 1)] + [
        Placement(m, cap) for m in (0.02, 0.04, 0.05, 0.06, 0.07, 0.08) for cap in (2, 3, args.shards)
    ]
    adaptive = [
        Probing(cap=cap, margin=margin, floor=floor)
        for floor in (1, 2)
        for cap in (3, 4, 6)
        for margin in (0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18, 0.20, 0.25)
        if cap > floor
    ]
    grid: list[tuple[Placement, Probing, Row]] = []
    for placement in placements:
        member = placement.member(centroids, corpus.vectors)
        for probing in fixed + adaptive:
            grid.append(
                (placement, probing, ev.evaluate(placement.label, probing.label, member, probing.chosen(query_sim)))
            )
    feasible = sorted(
        (g for g in grid if meets(g[2], g[2].recall_tune)),
        key=lambda g: (round(g[2].avg_probes, 1), g[2].storage, -g[2].recall_tune),
    )
    print(table([g[2] for g in feasible[:20]], "Meeting the goal on the tuning half, fewest probes then least storage"))
    by_storage = sorted(
        (g for g in grid if meets(g[2], g[2].recall_tune)), key=lambda g: (g[2].storage, g[2].avg_probes)
    )
    print(table([g[2] for g in by_storage[:10]], "Meeting the goal on the tuning half, least storage first"))
    no_copies = sorted(
        (g for g in grid if g[0].max_replicas == 1 and g[2].avg_probes <= GOAL_PROBES), key=lambda g: -g[2].recall_tune
    )
    print(table([g[2] for g in no_copies[:5]], "Best without replication, at most 3 probes on average"))
    floor1 = sorted(
        (g for g in grid if g[1].floor == 1 and meets(g[2], g[2].recall_tune)),
        key=lambda g: (round(g[2].avg_probes, 1), g[2].storage),
    )
    print(table([g[2] for g in floor1[:10]], "Meeting the goal with the plain adaptive rule (no floor)"))

    # 3. Margins tuned on one training run are fragile; candidates from the grid, retrained with five seeds,
    #    with and without the balance penalty.
    candidates = [(g[0], g[1]) for g in feasible[:1]] + [
        (Placement(0.06, 3), Probing(cap=4, margin=0.14)),
        (Placement(0.06, args.shards), Probing(cap=4, margin=0.14)),
        (Placement(0.05, 2), Probing(cap=4, margin=0.16)),
        (Placement(0.06, 2), Probing(cap=4, margin=0.16)),
        (Placement(0.06, 3), Probing(cap=4, margin=0.16)),
        (Placement(0.07, 2), Probing(cap=4, margin=0.16)),
    ]
    seeds = (0, 1, 2, 3, 4)
    stability: list[dict[str, Any]] = []
    print(
        "\n### Candidates retrained with seeds 0-4 (mean, [worst seed])\n\n| placement | probing | balance | "
        "avg probes | recall@10 | doc recall@10 | storage | shard size max over mean |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for balance in (0.0, 0.05):
        trained = [
            train(corpus, args.shards, sample=args.sample, seed=seed, iterations=args.iterations, balance=balance)
            for seed in seeds
        ]
        sims = [t.similarities(corpus.queries) for t in trained]
        for placement, probing in candidates:
            runs = [
                ev.evaluate(placement.label, probing.label, placement.member(t, corpus.vectors), probing.chosen(sim))
                for t, sim in zip(trained, sims, strict=True)
            ]
            summary = {
                "placement": asdict(placement),
                "probing": asdict(probing),
                "balance": balance,
                "avg_probes": float(np.mean([r.avg_probes for r in runs])),
                "recall": float(np.mean([r.recall for r in runs])),
                "recall_worst": float(min(r.recall for r in runs)),
                "doc_recall": float(np.mean([r.doc_recall for r in runs])),
                "storage": float(np.mean([r.storage for r in runs])),
                "storage_worst": float(max(r.storage for r in runs)),
                "size_max_over_mean": float(np.mean([r.size_max_over_mean for r in runs])),
                "size_max_over_mean_worst": float(max(r.size_max_over_mean for r in runs)),
            }
            stability.append(summary)
            print(
                f"| {placement.label} | {probing.label} | {balance} | {summary['avg_probes']:.2f} | "
                f"{summary['recall']:.3f} [{summary['recall_worst']:.3f}] | {summary['doc_recall']:.3f} | "
                f"x{summary['storage']:.2f} [x{summary['storage_worst']:.2f}] | "
                f"{summary['size_max_over_mean']:.2f} [{summary['size_max_over_mean_worst']:.2f}] |"
            )

    # 4. The chosen defaults: the curve (probes -> recall, calls saved) and their sensitivity to training.
    placement, probing, balance = DEFAULT_PLACEMENT, DEFAULT_PROBING, DEFAULT_BALANCE
    centroids = train(
        corpus, args.shards, sample=args.sample, seed=args.seed, iterations=args.iterations, balance=balance
    )
    query_sim = centroids.similarities(corpus.queries)
    member = placement.member(centroids, corpus.vectors)
    sweep = [Probing(cap=args.shards, margin=m) for m in (0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16)]
    sweep += [Probing(cap=probing.cap, margin=m) for m in (0.10, 0.12, 0.14, 0.16, 0.18, 0.20)]
    sweep += [Probing(cap=args.shards, margin=m) for m in (0.18, 0.20, 0.25, 0.30)]
    sweep += [Probing(cap=m) for m in range(1, args.shards + 1)]
    curve = [ev.evaluate(placement.label, p.label, member, p.chosen(query_sim)) for p in sweep]
    print(table(curve, f"Curve for the defaults ({placement.label}, balance {balance}, seed {args.seed})"))

    variants = [(s, args.seed, args.iterations) for s in (1024, 2048, 4096, n)]
    variants += [(args.sample, args.seed, it) for it in (5, 10, 20)]
    robust: list[Row] = []
    for sample, seed, iterations in variants:
        alt = train(corpus, args.shards, sample=sample, seed=seed, iterations=iterations, balance=balance)
        label = f"{probing.label}; sample {alt.trained_on}, {iterations} iterations"
        sim = alt.similarities(corpus.queries)
        robust.append(ev.evaluate(placement.label, label, placement.member(alt, corpus.vectors), probing.chosen(sim)))
    print(table(robust, f"The defaults' sensitivity to training sample size and iterations (balance {balance})"))

    out.update(
        issue_table=[asdict(r) for r in issue],
        grid=[{"placement": asdict(a), "probing": asdict(b), **asdict(r)} for a, b, r in grid],
        curve=[asdict(r) for r in curve],
        stability=stability,
        robustness=[asdict(r) for r in robust],
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
