"""Offline study (issue 14): hybrid fusion variants beyond the weight / normalisation grid of
``bench/document_fusion_study.py``, judged by the worst case over SciFact test, NFCorpus dev and mtrag-mini.

Same cache, units and BM25 as the retrieval studies (``bench.retrieval_study.Scorer``): BM25 over lexical units at
the shipped k1 / b and measured avgdl, a unit's weights on its first row, dense over the cached chunk vectors. Each
variant is a numpy re-implementation of ``ConvexFuser`` (lexical scope "document") with one change; the plain one
is checked against the shipped ``ConvexFuser`` on every corpus before anything else is reported.

Run: ``OMP_NUM_THREADS=1 python -m bench.fusion_variants_study``; JSON in ``bench/results/fusion_variants_study.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from shardrag.config import Bm25Settings
from shardrag.embedding.onnx import OnnxEmbedder
from shardrag.fusion import ConvexFuser
from shardrag_local.evaluation.baselines import Bm25Retriever

from bench.document_fusion_study import first_rows_only
from bench.retrieval_study import (
    CORPORA,
    FUSED_HITS,
    RESULTS,
    ROOT,
    Matrix,
    Scorer,
    _progress,
    load_corpus,
    reference_fusion,
)

MAX_DEPTH = 300


@dataclass
class Query:
    """One query's candidates: the dense top chunks and the lexical top units (first rows), best first."""

    dense: Matrix  # chunk indices
    dense_score: Matrix
    lexical: Matrix  # chunk indices (a unit's first row)
    lexical_score: Matrix
    all_dense: Matrix  # every chunk's dense score (for oracle variants)
    all_lexical: Matrix  # every chunk's lexical score (first rows; others 0)


class Corpus:
    def __init__(self, scorer: Scorer, k1: float, b: float) -> None:
        self.scorer = scorer
        self.name = scorer.corpus.name
        docs = scorer.corpus.chunk_docs
        doc_index: dict[str, int] = {}
        self.chunk_doc = np.array([doc_index.setdefault(d, len(doc_index)) for d in docs])
        self.doc_ids = list(doc_index)
        self.n_docs = len(doc_index)
        self.id_rank = scorer._id_rank
        every = scorer.bm25_scores(k1, b, scorer.lexical.avgdl)
        self.lexical_matrix = first_rows_only(scorer, every)
        self.queries: list[Query] = []
        for n in range(len(scorer.corpus.query_ids)):
            dense = np.array(scorer.top_chunks(scorer.dense_scores[n], MAX_DEPTH))
            lexical = np.array(scorer.top_chunks(self.lexical_matrix[n], MAX_DEPTH, positive_only=True), dtype=np.int64)
            self.queries.append(
                Query(
                    dense,
                    scorer.dense_scores[n][dense],
                    lexical,
                    self.lexical_matrix[n][lexical] if len(lexical) else np.zeros(0),
                    scorer.dense_scores[n],
                    self.lexical_matrix[n],
                )
            )

    def evaluate(self, fuse: Callable[[Corpus, Query], tuple[Matrix, Matrix]]) -> float:
        """nDCG@10 of a fusion: ``fuse`` returns candidate chunks and their fused scores."""
        rankings = {}
        for q, query in zip(self.scorer.corpus.query_ids, self.queries, strict=True):
            chunks, scores = fuse(self, query)
            order = np.lexsort((self.id_rank[chunks], -scores))[:FUSED_HITS]
            rankings[q] = [self.scorer.corpus.chunk_docs[c] for c in chunks[order]]
        return self.scorer.ndcg(rankings)


def _norm(values: Matrix, how: str) -> Matrix:
    if len(values) == 0:
        return values
    if how == "zscore":
        spread = values.std()
        return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
    if how == "minmax":
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else np.ones_like(values)
    if how == "max":  # divide by the top score
        return values / values.max() if values.max() > 0 else np.ones_like(values)
    raise ValueError(how)


def convex(
    alpha: float = 0.6,
    depth: int = 100,
    how: str = "zscore",
    *,
    lexical_depth: int | None = None,
    dense_docs: int | None = None,
    dense_norm_docs: bool = False,
    multi: float = 0.0,
    multi_kind: str = "second",
    rrf: float = 0.0,
    rrf_k: int = 60,
    fill_dense: bool = False,
    fill_lexical: bool = False,
    alpha_by_terms: dict[int, float] | None = None,
) -> Callable[[Corpus, Query], tuple[Matrix, Matrix]]:
    """``ConvexFuser`` (scope document) with options:

    - ``lexical_depth``: lexical candidates (default ``depth``);
    - ``dense_docs``: the dense list is cut at this many distinct documents instead of ``depth`` chunks;
    - ``dense_norm_docs``: the dense side is normalised over each candidate document's best chunk (not chunks);
    - ``multi``: a document's dense side adds ``multi`` x (normalised score - floor) of its other candidate chunks
      (``multi_kind`` "second": its second best; "mean": their mean; "sum": their sum);
    - ``rrf``: adds ``rrf`` x the documents' reciprocal-rank sum (over documents, ranks from 1), scaled by ``rrf_k``;
    - ``fill_dense`` / ``fill_lexical``: a candidate missing from one side gets its true score there (oracle);
    - ``alpha_by_terms``: alpha by the number of distinct BM25 query terms (else ``alpha``).
    """
    lexical_depth = lexical_depth or depth

    def fuse(corpus: Corpus, query: Query) -> tuple[Matrix, Matrix]:
        chunk_doc = corpus.chunk_doc
        if dense_docs is not None:
            seen: set[int] = set()
            cut = len(query.dense)
            for i, c in enumerate(query.dense.tolist()):
                seen.add(int(chunk_doc[c]))
                if len(seen) > dense_docs:
                    cut = i
                    break
            dense, dense_score = query.dense[:cut], query.dense_score[:cut]
        else:
            dense, dense_score = query.dense[:depth], query.dense_score[:depth]
        lexical, lexical_score = query.lexical[:lexical_depth], query.lexical_score[:lexical_depth]
        dense_doc = chunk_doc[dense]
        # Dense side, per document.
        best_raw: dict[int, float] = {}
        for d, s in zip(dense_doc.tolist(), dense_score.tolist(), strict=True):
            if d not in best_raw:
                best_raw[d] = s
        if dense_norm_docs:
            docs_in = np.array(list(best_raw))
            normed = _norm(np.array([best_raw[d] for d in docs_in]), how)
            floor = float(normed.min())
            lo, hi = np.array(list(best_raw.values())), normed
            # Map every candidate chunk through the same affine map as its document's best.
            if how == "zscore":
                raw = np.array(list(best_raw.values()))
                mean, spread = raw.mean(), raw.std()
                chunk_norm = (dense_score - mean) / spread if spread > 0 else np.zeros_like(dense_score)
            else:
                raw = np.array(list(best_raw.values()))
                span = raw.max() - raw.min()
                chunk_norm = (dense_score - raw.min()) / span if span > 0 else np.ones_like(dense_score)
            del lo, hi, docs_in
        else:
            chunk_norm = _norm(dense_score, how)
            floor = float(chunk_norm.min()) if len(chunk_norm) else 0.0
        per_doc: dict[int, list[float]] = {}
        for d, v in zip(dense_doc.tolist(), chunk_norm.tolist(), strict=True):
            per_doc.setdefault(d, []).append(v)
        dense_of_doc: dict[int, float] = {}
        for d, values in per_doc.items():
            value = values[0]
            if multi and len(values) > 1:
                others = np.array(values[1:]) - floor
                extra = {"second": others[0], "mean": others.mean(), "sum": others.sum()}[multi_kind]
                value += multi * float(extra)
            dense_of_doc[d] = value
        # Lexical side, per document.
        lexical_norm = _norm(lexical_score, how)
        lexical_floor = float(lexical_norm.min()) if len(lexical_norm) else 0.0
        lexical_of_doc: dict[int, float] = {}
        for d, v in zip(chunk_doc[lexical].tolist(), lexical_norm.tolist(), strict=True):
            if v > lexical_of_doc.get(d, -np.inf):
                lexical_of_doc[d] = v
        candidates = np.unique(np.concatenate([dense, lexical]))
        cand_doc = chunk_doc[candidates]
        # One chunk per document matters (the document ranks at its best chunk): use the document's best.
        if fill_dense:
            d_all = query.all_dense
            if how == "zscore":
                mean, spread = dense_score.mean(), dense_score.std()
                missing_dense = {}
                for d in cand_doc.tolist():
                    if d not in dense_of_doc:
                        best = d_all[chunk_doc == d].max()
                        missing_dense[d] = (best - mean) / spread
            else:
                low, span = dense_score.min(), dense_score.max() - dense_score.min()
                missing_dense = {}
                for d in cand_doc.tolist():
                    if d not in dense_of_doc:
                        missing_dense[d] = (d_all[chunk_doc == d].max() - low) / span
            dense_of_doc.update(missing_dense)
        if fill_lexical and len(lexical_score):
            l_all = query.all_lexical
            for d in cand_doc.tolist():
                if d not in lexical_of_doc:
                    raw = l_all[chunk_doc == d].max()
                    if how == "zscore":
                        lexical_of_doc[d] = (raw - lexical_score.mean()) / (lexical_score.std() or 1.0)
                    else:
                        span = lexical_score.max() - lexical_score.min()
                        lexical_of_doc[d] = (raw - lexical_score.min()) / span if span > 0 else 0.0
        a = alpha
        if alpha_by_terms is not None:
            a = alpha_by_terms.get(int(query_terms_of(corpus, query)), alpha)
        scores = np.array(
            [a * dense_of_doc.get(d, floor) + (1 - a) * lexical_of_doc.get(d, lexical_floor) for d in cand_doc.tolist()]
        )
        if rrf:
            dense_rank: dict[int, int] = {}
            for d in dense_doc.tolist():
                dense_rank.setdefault(d, len(dense_rank) + 1)
            lexical_rank: dict[int, int] = {}
            for d in chunk_doc[lexical].tolist():
                lexical_rank.setdefault(d, len(lexical_rank) + 1)
            bonus = np.array(
                [
                    (1 / (rrf_k + dense_rank[d]) if d in dense_rank else 0.0)
                    + (1 / (rrf_k + lexical_rank[d]) if d in lexical_rank else 0.0)
                    for d in cand_doc.tolist()
                ]
            )
            scores = scores + rrf * bonus * rrf_k  # scaled so that a top-1 on one side adds ~rrf
        return candidates, scores

    return fuse


def query_terms_of(corpus: Corpus, query: Query) -> int:
    n = next(i for i, q in enumerate(corpus.queries) if q is query)
    return int(corpus.scorer.query_terms[n].nnz)


def rrf_only(k: int = 60, depth: int = 100) -> Callable[[Corpus, Query], tuple[Matrix, Matrix]]:
    def fuse(corpus: Corpus, query: Query) -> tuple[Matrix, Matrix]:
        chunk_doc = corpus.chunk_doc
        dense, lexical = query.dense[:depth], query.lexical[:depth]
        score: dict[int, float] = {}
        rank: dict[int, int] = {}
        for c in dense.tolist():
            score[c] = 1 / (k + len(score) + 1)
        by_doc: dict[int, int] = {}
        for i, c in enumerate(lexical.tolist(), start=1):
            by_doc.setdefault(int(chunk_doc[c]), i)
        del rank
        candidates = np.unique(np.concatenate([dense, lexical]))
        values = np.array(
            [
                score.get(c, 0.0) + (1 / (k + by_doc[int(chunk_doc[c])]) if int(chunk_doc[c]) in by_doc else 0.0)
                for c in candidates.tolist()
            ]
        )
        return candidates, values

    return fuse


def shipped_check(corpus: Corpus) -> tuple[float, float]:
    """The plain variant against the shipped ``ConvexFuser`` (both must agree)."""
    scorer = corpus.scorer
    results = scorer.shard_results(corpus.lexical_matrix, 100)
    shipped = scorer.fused(results, ConvexFuser(0.6, depth=100, normalisation="zscore"))
    return shipped, corpus.evaluate(convex())


def variants(grid: str = "first") -> list[tuple[str, Callable[[Corpus, Query], tuple[Matrix, Matrix]]]]:
    out: list[tuple[str, Callable[[Corpus, Query], tuple[Matrix, Matrix]]]] = []
    if grid == "rrf":
        for how in ("zscore", "minmax"):
            for alpha in (0.5, 0.55, 0.6, 0.65, 0.7):
                for k in (20, 60):
                    for r in (0.4, 0.6, 0.8, 1.2, 2.0):
                        out.append((f"{how} a{alpha} +rrf{k} {r}", convex(alpha, how=how, rrf=r, rrf_k=k)))
                        out.append(
                            (
                                f"{how} a{alpha} +rrf{k} {r} dense100docs",
                                convex(alpha, how=how, rrf=r, rrf_k=k, dense_docs=100),
                            )
                        )
        return out
    for alpha in (0.5, 0.55, 0.6, 0.65):
        out.append((f"zscore a{alpha}", convex(alpha)))
        out.append((f"zscore a{alpha} dense-norm-docs", convex(alpha, dense_norm_docs=True)))
        out.append((f"zscore a{alpha} dense 100 docs", convex(alpha, dense_docs=100)))
        for m in (0.05, 0.1, 0.2, 0.3):
            for kind in ("second", "mean", "sum"):
                out.append((f"zscore a{alpha} multi {kind} {m}", convex(alpha, multi=m, multi_kind=kind)))
        for r in (0.1, 0.2, 0.4):
            out.append((f"zscore a{alpha} +rrf {r}", convex(alpha, rrf=r)))
        out.append((f"zscore a{alpha} fill dense (oracle)", convex(alpha, fill_dense=True)))
        out.append((f"zscore a{alpha} fill both (oracle)", convex(alpha, fill_dense=True, fill_lexical=True)))
    for k in (20, 60):
        out.append((f"rrf k{k}", rrf_only(k)))
    return out


def load_corpora(k1: float, b: float) -> dict[str, Corpus]:
    """Every development corpus from the cache, scored with BM25 at ``k1`` / ``b`` over the shipped window."""
    embedder = OnnxEmbedder(ROOT / "build" / "model", threads=1)
    return {
        name: Corpus(Scorer(load_corpus(name, folder, split, embedder), Bm25Settings().window), k1, b)
        for name, folder, split in CORPORA
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fusion_variants_study")
    parser.add_argument("--out", type=Path, default=RESULTS / "fusion_variants_study.json")
    parser.add_argument("--k1", type=float, default=Bm25Settings().k1)
    parser.add_argument("--b", type=float, default=Bm25Settings().b)
    parser.add_argument("--only", default="", help="substring filter on variant names")
    parser.add_argument("--grid", default="first", help="which set of variants")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    corpora = load_corpora(args.k1, args.b)
    references: dict[str, float] = {}
    for name, corpus in corpora.items():
        scorer = corpus.scorer
        bm25s = Bm25Retriever()
        bm25s.index(scorer.corpus.dataset.corpus)
        references[name] = reference_fusion(scorer, bm25s)["reference_fusion"]
        shipped, mine = shipped_check(corpora[name])
        _progress(
            f"{name}: shipped ConvexFuser {shipped:.4f}, re-implementation {mine:.4f}, ref {references[name]:.4f}"
        )
        if abs(shipped - mine) > 1e-9:
            raise SystemExit(f"{name}: the re-implementation does not reproduce ConvexFuser")
    rows: list[dict[str, Any]] = []
    for label, fuse in variants(args.grid):
        if args.only and args.only not in label:
            continue
        values = {n: round(c.evaluate(fuse), 4) for n, c in corpora.items()}
        rows.append({"variant": label, "ndcg@10": values})
        print(f"{label:45s} " + " ".join(f"{v:.4f}" for v in values.values()), flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    result = {
        "command": " ".join(["python -m bench.fusion_variants_study", *(sys.argv[1:] if argv is None else argv)]),
        "commit": commit,
        "k1": args.k1,
        "b": args.b,
        "references": {n: round(v, 4) for n, v in references.items()},
        "variants": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


# -- pseudo-relevance feedback: a second search with an expanded query ------------------------------------------


def _idf_columns(scorer: Scorer) -> Matrix:
    from shardrag.bm25 import idf

    lexical = scorer.lexical
    out = np.zeros(len(lexical.columns))
    for tid, col in lexical.columns.items():
        out[col] = idf(lexical.stats.documents, lexical.stats.df[tid])
    return out


def with_feedback(
    corpus: Corpus,
    k1: float,
    b: float,
    *,
    source: str = "fused",
    m: int = 5,
    dense_beta: float = 0.0,
    lexical_gamma: float = 0.0,
    terms: int = 10,
    chunk: str = "closest",
) -> Corpus:
    """A copy of ``corpus`` whose queries are expanded from a first pass: Rocchio on the dense query vector (the
    mean of the top ``m`` documents' best chunk vectors, weight ``dense_beta``) and RM-style BM25 expansion (the
    ``terms`` best terms of the top ``m`` documents' units by mean term share, idf-weighted, weight
    ``lexical_gamma``). ``source``: the first pass whose top documents feed back ("fused": the shipped hybrid,
    "dense": dense alone). ``chunk`` "closest": a document feeds back its chunk nearest the query; "hit": its
    candidate that the fused ranking lists first, which here is its lowest chunk id, i.e. its earliest position
    (usually its opening chunk), because this re-implementation scores a document's candidates alike and breaks ties
    by chunk id (the shipped rule, the opening chunk, is measured by ``prf-shipped``)."""
    import copy

    scorer = corpus.scorer
    first = convex()
    weights = scorer.lexical.weights(k1, b, scorer.lexical.avgdl)
    tf = scorer.lexical.tf
    share = sp_normalize_rows(tf)
    idf_col = _idf_columns(scorer)
    unit_of_doc: dict[int, list[int]] = {}
    for unit, doc in enumerate(scorer.unit_docs):
        unit_of_doc.setdefault(_doc_index(corpus, doc), []).append(unit)
    out = copy.copy(corpus)
    out.queries = []
    dense_rows = []
    lexical_rows = []
    for n, query in enumerate(corpus.queries):
        if source == "fused":
            chunks, scores = first(corpus, query)
            order = np.lexsort((corpus.id_rank[chunks], -scores))
            ranked_chunks = chunks[order]
        else:
            ranked_chunks = query.dense
        top_docs: list[int] = []
        best_chunk: dict[int, int] = {}
        for c in ranked_chunks.tolist():
            d = int(corpus.chunk_doc[c])
            if d not in best_chunk:
                best_chunk[d] = c
                top_docs.append(d)
            if len(top_docs) == m:
                break
        q = scorer.corpus.queries[n].astype(np.float64)
        if dense_beta:
            # A document's chunk closest to the query (not necessarily the fused list's chunk).
            vectors = []
            for d in top_docs:
                if chunk == "hit":
                    vectors.append(scorer.corpus.dense[best_chunk[d]])
                    continue
                mine = np.flatnonzero(corpus.chunk_doc == d)
                vectors.append(scorer.corpus.dense[mine[np.argmax(query.all_dense[mine])]])
            q = q + dense_beta * np.mean(vectors, axis=0)
            q = q / np.linalg.norm(q)
        dense_rows.append(scorer.corpus.dense @ q.astype(np.float32))
        qv = np.asarray(scorer.query_terms[n].todense()).ravel()
        if lexical_gamma:
            units = [u for d in top_docs for u in unit_of_doc[d]]
            p = np.asarray(share[units].mean(axis=0)).ravel() * idf_col
            p[qv > 0] = 0.0
            top = np.argsort(-p)[:terms]
            if p[top[0]] > 0:
                extra = np.zeros_like(qv)
                extra[top] = idf_col[top] * p[top] / p[top[0]]
                qv = qv + lexical_gamma * extra
        lexical_rows.append(np.asarray(weights @ qv).ravel())
    dense_all = np.array(dense_rows)
    unit_scores = np.array(lexical_rows)[:, scorer.chunk_unit]
    first_row = np.zeros(len(scorer.chunk_unit), dtype=bool)
    seen: set[int] = set()
    for chunk, unit in enumerate(scorer.chunk_unit.tolist()):
        if unit not in seen:
            seen.add(unit)
            first_row[chunk] = True
    lexical_all = np.where(first_row[None, :], unit_scores, 0.0)
    for n in range(len(corpus.queries)):
        dense = np.array(scorer.top_chunks(dense_all[n], MAX_DEPTH))
        lexical = np.array(scorer.top_chunks(lexical_all[n], MAX_DEPTH, positive_only=True), dtype=np.int64)
        out.queries.append(
            Query(
                dense,
                dense_all[n][dense],
                lexical,
                lexical_all[n][lexical] if len(lexical) else np.zeros(0),
                dense_all[n],
                lexical_all[n],
            )
        )
    return out


def _doc_index(corpus: Corpus, doc: str) -> int:
    if not hasattr(corpus, "_doc_index"):
        corpus._doc_index = {d: i for i, d in enumerate(corpus.doc_ids)}  # type: ignore[attr-defined]
    return corpus._doc_index[doc]  # type: ignore[attr-defined]


def sp_normalize_rows(matrix: Any) -> Any:
    import scipy.sparse as sp

    sums = np.asarray(matrix.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.diags(1.0 / sums) @ matrix


def prf_grid() -> None:
    k1, b = Bm25Settings().k1, Bm25Settings().b
    corpora = load_corpora(k1, b)
    fusions = [
        ("a0.6", convex()),
        ("a0.55", convex(0.55)),
        ("a0.5", convex(0.5)),
        ("a0.5+rrf60 0.6", convex(0.5, rrf=0.6)),
        ("a0.55+rrf60 0.4", convex(0.55, rrf=0.4)),
        ("a0.55+rrf60 0.6", convex(0.55, rrf=0.6)),
        ("a0.55+rrf60 0.8", convex(0.55, rrf=0.8)),
        ("a0.6+rrf60 0.6", convex(0.6, rrf=0.6)),
    ]
    for chunk in ("closest", "hit"):
        for m in (2, 3, 4, 5):
            for beta in (0.3, 0.5, 0.7, 1.0):
                expanded = {n: with_feedback(c, k1, b, m=m, dense_beta=beta, chunk=chunk) for n, c in corpora.items()}
                for label, fuse in fusions:
                    values = {n: round(c.evaluate(fuse), 4) for n, c in expanded.items()}
                    print(
                        f"prf {chunk} m{m} beta{beta} {label:18s} " + " ".join(f"{v:.4f}" for v in values.values()),
                        flush=True,
                    )


def shipped_feedback(corpus: Corpus, documents: int, weight: float, alpha: float = 0.6, chunk: str = "first") -> float:
    """nDCG@10 of the shipped path with dense feedback: ``ConvexFuser`` on the first pass, ``DenseFeedback`` on
    its hits, a second exact dense search with the expanded vector, ``with_dense`` and ``ConvexFuser`` again."""
    from shardrag.feedback import DenseFeedback, with_dense
    from shardrag.records import Hit, ShardResult

    scorer = corpus.scorer
    fuser = ConvexFuser(alpha, depth=100, normalisation="zscore")
    feedback = DenseFeedback(documents=documents, weight=weight)
    first = scorer.shard_results(corpus.lexical_matrix, 100)
    index = {cid: i for i, cid in enumerate(scorer.corpus.chunk_ids)}
    opening: dict[str, int] = {}  # each document's first chunk (position 0: its title and opening)
    for i, d in enumerate(scorer.corpus.chunk_docs):
        opening.setdefault(d, i)
    ids, docs = scorer.corpus.chunk_ids, scorer.corpus.chunk_docs
    rankings = {}
    for n, q in enumerate(scorer.corpus.query_ids):
        fused = fuser.run(first[n], 100).hits
        chosen = feedback.feedback_hits(fused)
        if chunk == "first":
            vectors = [scorer.corpus.dense[opening[h.doc_id]] for h in chosen]
        else:
            vectors = [scorer.corpus.dense[index[h.chunk_id]] for h in chosen]
        moved = np.asarray(feedback.run(scorer.corpus.queries[n].tolist(), [v.tolist() for v in vectors]))
        row = scorer.corpus.dense @ moved.astype(np.float32)
        dense = [
            Hit.model_construct(chunk_id=ids[i], doc_id=docs[i], score=float(row[i]))
            for i in scorer.top_chunks(row, 100)
        ]
        second = [ShardResult.model_construct(shard=0, status="ok", hits=dense, lexical=[])]
        rankings[q] = [h.doc_id for h in fuser.run(with_dense(first[n], second), 100).hits]
    return scorer.ndcg(rankings)


def prf_shipped() -> None:
    k1, b = Bm25Settings().k1, Bm25Settings().b
    corpora = load_corpora(k1, b)
    for documents in (1, 2, 3):
        for weight in (0.5, 0.7, 1.0, 1.5):
            values = {n: round(shipped_feedback(c, documents, weight), 4) for n, c in corpora.items()}
            print(
                f"shipped feedback (first chunk) documents {documents} weight {weight} a0.6 "
                + " ".join(f"{v:.4f}" for v in values.values()),
                flush=True,
            )


def prf_main() -> None:
    k1, b = Bm25Settings().k1, Bm25Settings().b
    corpora = load_corpora(k1, b)
    settings = []
    for source in ("fused", "dense"):
        for m in (3, 10):
            for beta in (0.0, 0.5, 1.0):
                for gamma in (0.0, 0.5):
                    if beta == 0.0 and gamma == 0.0:
                        continue
                    if source == "dense" and gamma:
                        continue
                    settings.append((source, m, beta, gamma))
    for source, m, beta, gamma in settings:
        expanded = {
            n: with_feedback(c, k1, b, source=source, m=m, dense_beta=beta, lexical_gamma=gamma)
            for n, c in corpora.items()
        }
        for label, fuse in (("a0.6", convex()), ("a0.55+rrf60 0.6", convex(0.55, rrf=0.6))):
            values = {n: round(c.evaluate(fuse), 4) for n, c in expanded.items()}
            print(
                f"prf {source} m{m} beta{beta} gamma{gamma} {label:18s} "
                + " ".join(f"{v:.4f}" for v in values.values()),
                flush=True,
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["prf"]:
        prf_main()
    elif sys.argv[1:2] == ["prf-shipped"]:
        prf_shipped()
    elif sys.argv[1:2] == ["prf-grid"]:
        prf_grid()
    else:
        raise SystemExit(main())
