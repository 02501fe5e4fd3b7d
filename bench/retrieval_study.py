"""Offline study: retrieval defaults (BM25 k1, b, avgdl; fusion method, weight, candidates per modality) chosen
by what holds across every development corpus, never by the best score on one.

Development corpora: SciFact test (the figure BENCHMARKS.md reports), NFCorpus **dev** (its test queries stay
held out) and mtrag-mini (each turn's last question alone). Each corpus is chunked and embedded once with the
shipped chunker and the real ONNX model, and cached under ``build/retrieval-study/`` (not in git); everything else
is numpy over that cache, scored with the shipped code:

- BM25 side: the lexical units ingestion makes (:func:`shardrag.lexical_units.lexical_units` at ``--window``, the
  shipped setting by default; 0 is BM25 per chunk), every chunk scored as its unit,
  :class:`shardrag.bm25.Tokenizer` terms, :func:`shardrag.bm25.saturation` weights (checked against
  :meth:`Bm25Encoder.document` on sampled units), :meth:`Bm25Encoder.query` for the IDF side, unit counts and
  document frequencies as :class:`~shardrag.bm25.CorpusStats` counts them (each unit once);
- fusion: the shipped :class:`~shardrag.fusion.ConvexFuser` / :class:`~shardrag.fusion.RrfFuser` on the global top
  ``depth`` of each modality (what the merge across shards gives);
- documents ranked at their best chunk, nDCG@10 as ``shardrag eval`` computes it.

References in the same run: bm25s over whole documents (k1 1.5, b 0.75), exact chunk-dense (a document at its
best chunk), and the issue's bar: equal-weight min-max convex fusion of the two over their top 100 documents.

Selection rule: BM25 by the worst case over corpora of (chunk BM25 - bm25s); fusion by the worst case over
corpora of (hybrid - the reference fusion). Sensitivity: every parameter varied around the choice.

Run: ``make retrieval-study`` (``python -m bench.retrieval_study``); JSON and Markdown in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from shardrag.bm25 import LENGTH_ID, Bm25Encoder, CorpusStats, Tokenizer, saturation, term_ids
from shardrag.chunking import Chunker, Document
from shardrag.config import Bm25Settings, EmbeddingSettings, IngestionSettings
from shardrag.embedding.onnx import OnnxEmbedder
from shardrag.fusion import ConvexFuser, Fuser, RrfFuser
from shardrag.lexical_units import lexical_units
from shardrag.records import Hit, ShardResult
from shardrag_local.evaluation.baselines import Bm25Retriever
from shardrag_local.evaluation.dataset import BeirDataset
from shardrag_local.evaluation.metrics import ndcg_at_k

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
CACHE = ROOT / "build" / "retrieval-study"
RESULTS = ROOT / "bench" / "results"
#: (name, folder, qrels split): NFCorpus is read on its dev split only.
CORPORA = (
    ("scifact", "scifact", "test"),
    ("nfcorpus-dev", "nfcorpus-dev", "dev"),
    ("mtrag-mini", "mtrag-mini", "test"),
)
#: Chunk hits the fused ranking is cut at before documents are counted (more than enough for 10 documents).
FUSED_HITS = 100
#: Documents each side of the reference fusion contributes (the issue's "top-100").
REFERENCE_DEPTH = 100
#: Documents per uploaded file in ``shardrag eval`` (``--docs-per-file``), for the batch-by-batch avgdl.
EVAL_BATCH_DOCS = 250

K1_GRID = (0.6, 0.9, 1.2, 1.5, 2.0)
#: Lexical unit sizes compared at the chosen BM25 and fusion (0: BM25 per chunk).
WINDOWS = (0, 128, 256, 512, 1024, 4096)
B_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9)
AVGDL_FACTORS = (0.5, 0.7, 1.0, 1.3, 2.0)
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEPTHS = (50, 100, 200)
RRF_KS = (10, 20, 60)
JOINT_K1 = (1.2, 1.5, 2.0)
#: nDCG@10 differences below this are ties in the final choice (one query of ~300 moves a mean by ~0.003).
NOISE = 0.001
#: Candidates per modality that can ship: at 200 on 4 shards each shard sends 75 per modality, and the ids-only tail
#: leaves ~300 characters of text per hit for generation in the 160 KiB state budget (~1,000 at 100).
MAX_SHIPPED_DEPTH = 100
#: Hybrid figures already published that a new default must keep (SciFact test is what BENCHMARKS.md reports).
KEEP = {"scifact": 0.737}
JOINT_B = (0.4, 0.5, 0.6, 0.75)
JOINT_DEPTHS = (100, 200)
JOINT_FUSIONS = (("zscore", 0.5), ("zscore", 0.6), ("minmax", 0.5), ("minmax", 0.6))

Matrix = np.ndarray[Any, Any]


def _progress(message: str) -> None:
    print(f"[study] {message}", file=sys.stderr, flush=True)


# -- the cache: chunks and their embeddings, built once per corpus ---------------------------------------------


@dataclass
class Corpus:
    name: str
    dataset: BeirDataset
    chunk_ids: list[str]
    chunk_docs: list[str]
    texts: list[str]  # what is embedded and BM25-indexed: the chunk with its title prefixed
    dense: Matrix  # [chunks, 384], unit rows
    queries: Matrix  # [queries, 384], one query at a time as the Embed handler does
    query_ids: list[str]
    chunker: Chunker


def units_of(corpus: Corpus, window: int) -> tuple[list[str], list[str], Matrix]:
    """The lexical units ingestion makes of the corpus (:func:`shardrag.lexical_units.lexical_units` over the same
    chunks): each unit's text, its document, and each chunk's unit."""
    tokenizer = Tokenizer()
    texts: list[str] = []
    docs: list[str] = []
    chunk_unit: list[int] = []
    chunk_ids: list[str] = []
    for document in _documents(corpus.dataset):
        chunks = corpus.chunker.run(document)
        chunk_ids += [c.chunk_id for c in chunks]
        units = lexical_units(
            document, chunks, window=window, tokenizer=tokenizer, embedding_text=corpus.chunker.embedding_text
        )
        for unit in units:
            chunk_unit += [len(texts)] * len(unit.chunks)
            texts.append(unit.text)
            docs.append(document.doc_id)
    if chunk_ids != corpus.chunk_ids:
        raise RuntimeError(f"{corpus.name}: the chunker no longer cuts what the cache holds; remove {CACHE}")
    return texts, docs, np.array(chunk_unit, dtype=np.int64)


def _documents(dataset: BeirDataset) -> list[Document]:
    """The documents the JSON Lines parser makes of the corpus's lines (title stripped; a title-only line is its
    title), so that chunks are those ``shardrag eval`` ingests."""
    out = []
    for doc in dataset.corpus:
        if not (doc.text.strip() or doc.title.strip()):
            continue
        out.append(
            Document(doc_id=doc.doc_id, text=doc.text if doc.text.strip() else doc.title, title=doc.title.strip())
        )
    return out


def load_corpus(name: str, folder: str, split: str, embedder: OnnxEmbedder) -> Corpus:
    dataset = BeirDataset.load(DATASETS / folder, split=split)
    ingestion = IngestionSettings()
    manifest = json.loads((ROOT / "build" / "model" / "manifest.json").read_text())
    key = {
        "model": manifest["model_sha256"],
        "chunk": [ingestion.chunk_size, ingestion.chunk_overlap, Chunker.VERSION],
        "data": dataset.checksums,
    }
    where = CACHE / name
    meta = where / "meta.json"
    chunker = Chunker(size=ingestion.chunk_size, overlap=ingestion.chunk_overlap, token_spans=embedder.token_spans)
    if meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        chunks = json.loads((where / "chunks.json").read_text())
        dense = np.load(where / "dense.npy")
        queries = np.load(where / "queries.npy")
        _progress(f"{name}: cached, {len(chunks['ids'])} chunks")
    else:
        ids, docs, texts = [], [], []
        for document in _documents(dataset):
            for chunk in chunker.run(document):
                ids.append(chunk.chunk_id)
                docs.append(chunk.doc_id)
                texts.append(chunker.embedding_text(chunk))
        chunks = {"ids": ids, "docs": docs, "texts": texts}
        _progress(f"{name}: embedding {len(texts)} chunks of {len(dataset.corpus)} documents")
        started = time.perf_counter()
        slabs = []
        for start in range(0, len(texts), 2048):
            slabs.append(embedder.embed(texts[start : start + 2048]))
            _progress(f"{name}: {min(start + 2048, len(texts))}/{len(texts)} ({time.perf_counter() - started:.0f} s)")
        dense = np.concatenate(slabs) if slabs else np.zeros((0, embedder.dimension), np.float32)
        queries = np.stack([embedder.embed([dataset.queries[q]])[0] for q in dataset.queries])
        where.mkdir(parents=True, exist_ok=True)
        (where / "chunks.json").write_text(json.dumps(chunks))
        np.save(where / "dense.npy", dense)
        np.save(where / "queries.npy", queries)
        meta.write_text(json.dumps({"key": key, "embed_s": round(time.perf_counter() - started, 1)}))
    return Corpus(
        name, dataset, chunks["ids"], chunks["docs"], chunks["texts"], dense, queries, list(dataset.queries), chunker
    )


# -- scoring ---------------------------------------------------------------------------------------------------


class Lexical:
    """The corpus's lexical units (a chunk each with ``window`` 0) as BM25 term counts, weighted on demand exactly
    as the shipped encoder weighs them."""

    def __init__(self, texts: Sequence[str]) -> None:
        tokenizer = Tokenizer()
        counted = [term_ids(tokenizer.terms(t)) for t in texts]
        self.columns: dict[int, int] = {}
        rows, cols, vals = [], [], []
        for row, counts in enumerate(counted):
            for tid, tf in counts.items():
                rows.append(row)
                cols.append(self.columns.setdefault(tid, len(self.columns)))
                vals.append(float(tf))
        self.tf = sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(self.columns)), dtype=np.float64)
        self.length = np.array([sum(c.values()) for c in counted], dtype=np.float64)
        df = np.asarray((self.tf > 0).sum(axis=0)).ravel()
        # What the term statistics hold after ingesting every unit (CorpusStats.count: one row per unit counts).
        self.stats = CorpusStats(
            len(texts),
            {tid: int(df[col]) for tid, col in self.columns.items()},
            tokens=int(self.length.sum()),
            measured=len(texts),
        )
        self._texts = texts

    @property
    def avgdl(self) -> float:
        assert self.stats.avgdl is not None
        return self.stats.avgdl

    def weights(self, k1: float, b: float, avgdl: float | Matrix) -> sp.csr_matrix:
        """The stored side of every chunk; ``avgdl`` one value, or one per chunk (what each was written with)."""
        w = self.tf.copy()
        per_entry = np.diff(w.indptr)
        lengths = np.repeat(self.length, per_entry)
        means = np.repeat(avgdl, per_entry) if isinstance(avgdl, np.ndarray) else avgdl
        w.data = saturation(w.data, lengths, k1=k1, b=b, avgdl=means)
        return w

    def check(self, k1: float, b: float, avgdl: float, sample: int = 40) -> float:
        """Largest difference between :meth:`weights` and the shipped encoder on sampled chunks (must be ~0)."""
        encoder = Bm25Encoder(k1=k1, b=b, avgdl=avgdl)
        w = self.weights(k1, b, avgdl)
        worst = 0.0
        for row in np.random.default_rng(0).choice(len(self._texts), size=min(sample, len(self._texts)), replace=False):
            shipped = encoder.document(self._texts[row])
            got = {
                tid: w[row, self.columns[tid]] for tid in shipped.indices if tid != LENGTH_ID and tid in self.columns
            }
            for tid, value in zip(shipped.indices, shipped.values, strict=True):
                if tid != LENGTH_ID:
                    worst = max(worst, abs(got.get(tid, 0.0) - value))
        return worst

    def query_matrix(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The shipped query side (IDF from the corpus-wide statistics) of every query, as columns of :attr:`tf`."""
        encoder = Bm25Encoder()
        rows, cols, vals = [], [], []
        for row, text in enumerate(texts):
            vector = encoder.query(text, self.stats)
            for tid, value in zip(vector.indices, vector.values, strict=True):
                rows.append(row)
                cols.append(self.columns[tid])
                vals.append(value)
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(self.columns)), dtype=np.float64)


class Scorer:
    """Rankings and nDCG@10 of one corpus."""

    def __init__(self, corpus: Corpus, window: int) -> None:
        self.corpus = corpus
        unit_texts, self.unit_docs, self.chunk_unit = units_of(corpus, window)
        self.lexical = Lexical(unit_texts)
        self.query_terms = self.lexical.query_matrix([corpus.dataset.queries[q] for q in corpus.query_ids])
        self.dense_scores: Matrix = corpus.queries @ corpus.dense.T
        self._order = np.argsort(np.array(corpus.chunk_ids, dtype=object))  # chunk-id rank for tie-breaks
        self._id_rank = np.empty(len(corpus.chunk_ids), dtype=np.int64)
        self._id_rank[self._order] = np.arange(len(corpus.chunk_ids))
        self.qrels = corpus.dataset.qrels

    def bm25_scores(self, k1: float, b: float, avgdl: float | Matrix) -> Matrix:
        """Every chunk's BM25 score: its unit's (every chunk of a unit stores the unit's weights)."""
        scores = self.query_terms @ self.lexical.weights(k1, b, avgdl).T
        return np.asarray(scores.todense())[:, self.chunk_unit]

    def top_chunks(self, row: Matrix, k: int, positive_only: bool = False) -> list[int]:
        """The ``k`` best chunks of one score row, best first, ties by chunk id (as ``merge_modality``)."""
        k = min(k, row.shape[0])
        candidates = np.argpartition(-row, k - 1)[:k]
        edge = row[candidates].min()
        candidates = np.flatnonzero(row >= edge)
        if positive_only:
            candidates = candidates[row[candidates] > 0]
        ordered = sorted(candidates.tolist(), key=lambda i: (-row[i], self._id_rank[i]))
        return ordered[:k]

    def ndcg(self, rankings: dict[str, list[str]]) -> float:
        """Mean nDCG@10 over judged queries (a document counted at its first, best, chunk)."""
        values = [
            ndcg_at_k(rankings.get(q, []), j, 10) for q, j in self.qrels.items() if any(g > 0 for g in j.values())
        ]
        return float(np.mean(values))

    def chunk_ranking(self, scores: Matrix, *, positive_only: bool = False) -> dict[str, list[str]]:
        docs = self.corpus.chunk_docs
        return {
            q: [docs[i] for i in self.top_chunks(scores[n], FUSED_HITS, positive_only)]
            for n, q in enumerate(self.corpus.query_ids)
        }

    def shard_results(self, lexical: Matrix, depth: int) -> list[list[ShardResult]]:
        """Per query, one result holding the global top ``depth`` of each modality (the merge across shards)."""
        ids, docs = self.corpus.chunk_ids, self.corpus.chunk_docs
        out = []
        for n in range(len(self.corpus.query_ids)):
            dense = [
                Hit.model_construct(chunk_id=ids[i], doc_id=docs[i], score=float(self.dense_scores[n, i]))
                for i in self.top_chunks(self.dense_scores[n], depth)
            ]
            bm25 = [
                Hit.model_construct(chunk_id=ids[i], doc_id=docs[i], score=float(lexical[n, i]))
                for i in self.top_chunks(lexical[n], depth, positive_only=True)
            ]
            out.append([ShardResult.model_construct(shard=0, status="ok", hits=dense, lexical=bm25)])
        return out

    def fused(self, results: list[list[ShardResult]], fuser: Fuser) -> float:
        rankings = {
            q: [h.doc_id for h in fuser.run(results[n], FUSED_HITS).hits] for n, q in enumerate(self.corpus.query_ids)
        }
        return self.ndcg(rankings)


def reference_fusion(scorer: Scorer, bm25s: Bm25Retriever) -> dict[str, float]:
    """The issue's bar and its two halves: bm25s (whole documents), exact chunk-dense (a document at its best
    chunk), and their equal-weight convex fusion after min-max over each side's top 100 documents (missing: 0)."""
    corpus = scorer.corpus
    doc_ids = bm25s.ids
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    chunk_doc = np.array([doc_index[d] for d in corpus.chunk_docs])
    rows = bm25s.score_rows({q: corpus.dataset.queries[q] for q in corpus.query_ids})
    dense_rank, bm25_rank, fused_rank = {}, {}, {}
    for n, q in enumerate(corpus.query_ids):
        dense_docs = np.full(len(doc_ids), -np.inf)
        np.maximum.at(dense_docs, chunk_doc, scorer.dense_scores[n])
        sides = []
        for scores, out in ((dense_docs, dense_rank), (rows[q].astype(np.float64), bm25_rank)):
            top = sorted(range(len(doc_ids)), key=lambda i: (-scores[i], doc_ids[i]))[:REFERENCE_DEPTH]
            out[q] = [doc_ids[i] for i in top]
            values = scores[top]
            low, span = values.min(), values.max() - values.min()
            sides.append({doc_ids[i]: (scores[i] - low) / span if span > 0 else 1.0 for i in top})
        union = set(sides[0]) | set(sides[1])
        fused = {d: 0.5 * sides[0].get(d, 0.0) + 0.5 * sides[1].get(d, 0.0) for d in union}
        fused_rank[q] = sorted(fused, key=lambda d: (-fused[d], d))
    return {
        "bm25s": scorer.ndcg(bm25_rank),
        "chunk_dense": scorer.ndcg(dense_rank),
        "reference_fusion": scorer.ndcg(fused_rank),
    }


def batch_avgdl(scorer: Scorer) -> Matrix:
    """The mean each unit is written with when the corpus arrives in ``shardrag eval``'s files of 250 documents
    (each batch: what is stored plus the batch itself, as :meth:`Bm25Encoder.documents` computes it)."""
    docs = scorer.unit_docs
    order = list(dict.fromkeys(docs))
    batch_of = {d: i // EVAL_BATCH_DOCS for i, d in enumerate(order)}
    batches = np.array([batch_of[d] for d in docs])
    out = np.empty(len(docs))
    tokens = count = 0.0
    for batch in range(int(batches.max()) + 1):
        rows = np.flatnonzero(batches == batch)
        tokens += scorer.lexical.length[rows].sum()
        count += len(rows)
        out[rows] = tokens / count
    return out


def one_row_per_unit(scorer: Scorer, k1: float, b: float, how: str, alpha: float, depth: int) -> float:
    """Only a unit's first row carries its weights (so the lexical top ``depth`` holds ``depth`` distinct units,
    where tied rows of one unit crowd it when every row carries them), and fusion gives a chunk its document's best
    lexical score (document-level lexical evidence), its own dense score: the design shipped since, whose grid
    ``bench/document_fusion_study.py`` measures with the shipped fusers."""
    corpus = scorer.corpus
    docs = corpus.chunk_docs
    first: dict[int, int] = {}
    for chunk, unit in enumerate(scorer.chunk_unit.tolist()):
        first.setdefault(unit, chunk)
    units = np.asarray((scorer.query_terms @ scorer.lexical.weights(k1, b, scorer.lexical.avgdl).T).todense())

    def normalised(values: Matrix) -> Matrix:
        if how == "zscore":
            spread = values.std()
            return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else np.ones_like(values)

    rankings = {}
    for n, q in enumerate(corpus.query_ids):
        dense = scorer.top_chunks(scorer.dense_scores[n], depth)
        dense_norm = normalised(scorer.dense_scores[n][dense])
        row = units[n]
        top = [u for u in np.argsort(-row, kind="stable")[:depth].tolist() if row[u] > 0]
        lexical_norm = normalised(row[top]) if top else np.zeros(0)
        by_doc: dict[str, float] = {}
        for unit, value in zip(top, lexical_norm.tolist(), strict=True):
            by_doc[scorer.unit_docs[unit]] = max(by_doc.get(scorer.unit_docs[unit], -np.inf), value)
        dense_of = dict(zip(dense, dense_norm.tolist(), strict=True))
        dense_floor = float(dense_norm.min())
        lexical_floor = float(lexical_norm.min()) if top else 0.0
        candidates = set(dense) | {first[u] for u in top}
        fused = {
            c: alpha * dense_of.get(c, dense_floor) + (1 - alpha) * by_doc.get(docs[c], lexical_floor)
            for c in candidates
        }
        ranked = sorted(fused, key=lambda c: (-fused[c], scorer._id_rank[c]))[:FUSED_HITS]
        rankings[q] = [docs[c] for c in ranked]
    return scorer.ndcg(rankings)


# -- the study -------------------------------------------------------------------------------------------------


def _worst(values: dict[str, float], bars: dict[str, float]) -> float:
    return min(values[name] - bars[name] for name in values)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def study(names: Sequence[str], window: int) -> dict[str, Any]:
    embedder = OnnxEmbedder.from_settings(EmbeddingSettings(model_dir=str(ROOT / "build" / "model")))
    scorers: dict[str, Scorer] = {}
    references: dict[str, dict[str, float]] = {}
    corpora: dict[str, Any] = {}
    for name, folder, split in CORPORA:
        if name not in names:
            continue
        corpus = load_corpus(name, folder, split, embedder)
        scorer = scorers[name] = Scorer(corpus, window)
        bm25s = Bm25Retriever()
        bm25s.index(corpus.dataset.corpus)
        references[name] = reference_fusion(scorer, bm25s)
        corpora[name] = {
            "split": split,
            "documents": len(corpus.dataset.corpus),
            "chunks": len(corpus.chunk_ids),
            "lexical_units": len(scorer.unit_docs),
            "queries": len(corpus.query_ids),
            "measured_avgdl": round(scorer.lexical.avgdl, 2),
            "shipped_weights_max_abs_diff": scorer.lexical.check(1.2, 0.4, scorer.lexical.avgdl),
            "references": _rounded(references[name]),
        }
        _progress(f"{name}: references {_rounded(references[name])}, avgdl {scorer.lexical.avgdl:.1f}")
    bm25s_bar = {n: references[n]["bm25s"] for n in scorers}
    fusion_bar = {n: references[n]["reference_fusion"] for n in scorers}

    # BM25: k1 x b at the measured (exact) avgdl, chosen by the worst margin over bm25s.
    bm25_grid = []
    for k1 in K1_GRID:
        for b in B_GRID:
            values = {
                n: s.ndcg(s.chunk_ranking(s.bm25_scores(k1, b, s.lexical.avgdl), positive_only=True))
                for n, s in scorers.items()
            }
            bm25_grid.append(
                {"k1": k1, "b": b, "ndcg@10": _rounded(values), "worst_vs_bm25s": _worst(values, bm25s_bar)}
            )
        _progress(f"bm25 k1 {k1}: done")
    best_bm25 = max(bm25_grid, key=lambda r: (round(r["worst_vs_bm25s"], 4), -abs(r["k1"] - 1.2) - abs(r["b"] - 0.4)))
    k1, b = best_bm25["k1"], best_bm25["b"]

    # Fusion over the chosen BM25: methods x weights x candidates per modality, by the worst margin over the bar.
    lexical = {n: s.bm25_scores(k1, b, s.lexical.avgdl) for n, s in scorers.items()}
    dense_only = {n: s.ndcg(s.chunk_ranking(s.dense_scores)) for n, s in scorers.items()}
    bm25_only = {n: s.ndcg(s.chunk_ranking(lexical[n], positive_only=True)) for n, s in scorers.items()}
    fusion_grid = []
    for depth in DEPTHS:
        results = {n: s.shard_results(lexical[n], depth) for n, s in scorers.items()}
        configs: list[tuple[dict[str, Any], Fuser]] = [
            (
                {"kind": "convex", "normalisation": how, "alpha": alpha, "depth": depth},
                ConvexFuser(alpha, depth=depth, normalisation=how),
            )
            for how in ("minmax", "zscore")
            for alpha in ALPHAS
        ]
        configs += [({"kind": "rrf", "rrf_k": k, "depth": depth}, RrfFuser(k, depth=depth)) for k in RRF_KS]
        for config, fuser in configs:
            values = {n: s.fused(results[n], fuser) for n, s in scorers.items()}
            fusion_grid.append(
                {**config, "ndcg@10": _rounded(values), "worst_vs_reference": _worst(values, fusion_bar)}
            )
        _progress(f"fusion depth {depth}: done")
    best_fusion = max(fusion_grid, key=lambda r: round(r["worst_vs_reference"], 4))

    # Hybrid is the default mode, so the final (k1, b) and fusion are chosen together: the best fusions of the
    # grid above over the neighbourhood of BM25 settings, by the hybrid's worst margin over the reference fusion
    # (ties: BM25 mode's own worst margin over bm25s).
    bm25_worst = {(r["k1"], r["b"]): r["worst_vs_bm25s"] for r in bm25_grid}
    joint = []
    for jk1 in JOINT_K1:
        for jb in JOINT_B:
            scores = {n: s.bm25_scores(jk1, jb, s.lexical.avgdl) for n, s in scorers.items()}
            for depth in JOINT_DEPTHS:
                results = {n: s.shard_results(scores[n], depth) for n, s in scorers.items()}
                for how, alpha in JOINT_FUSIONS:
                    fuser = ConvexFuser(alpha, depth=depth, normalisation=how)
                    values = {n: s.fused(results[n], fuser) for n, s in scorers.items()}
                    joint.append(
                        {
                            "k1": jk1,
                            "b": jb,
                            "kind": "convex",
                            "normalisation": how,
                            "alpha": alpha,
                            "depth": depth,
                            "ndcg@10": _rounded(values),
                            "worst_vs_reference": _worst(values, fusion_bar),
                            "bm25_worst_vs_bm25s": bm25_worst[(jk1, jb)],
                        }
                    )
        _progress(f"joint k1 {jk1}: done")
    # Hybrid worst cases closer than NOISE are a tie (a few queries); among them BM25 mode's worst case decides.
    # Only depths the state payload affords with text for generation (MAX_SHIPPED_DEPTH) can ship.
    # And the figure already published must hold: SciFact test hybrid >= 0.737 (issue 14), at three decimals.
    shippable = [
        r
        for r in joint
        if r["depth"] <= MAX_SHIPPED_DEPTH
        and all(round(r["ndcg@10"][n], 3) >= v for n, v in KEEP.items() if n in r["ndcg@10"])
    ]
    top = max(r["worst_vs_reference"] for r in shippable)
    final = max(
        (r for r in shippable if r["worst_vs_reference"] >= top - NOISE),
        key=lambda r: (r["bm25_worst_vs_bm25s"], r["worst_vs_reference"]),
    )
    k1, b = final["k1"], final["b"]
    bm25_only = {
        n: s.ndcg(s.chunk_ranking(s.bm25_scores(k1, b, s.lexical.avgdl), positive_only=True))
        for n, s in scorers.items()
    }

    # avgdl: the exact mean, mis-estimates of it, the old constant 64, and the batch-by-batch mean of a load.
    avgdl_rows = []
    variants: list[tuple[str, Callable[[Scorer], float | Matrix]]] = [
        *((f"measured x{f}", lambda s, f=f: s.lexical.avgdl * f) for f in AVGDL_FACTORS),
        ("constant 64 (the old default)", lambda s: 64.0),
        (f"as written in files of {EVAL_BATCH_DOCS} documents", batch_avgdl),
    ]
    for label, avgdl_of in variants:
        values = {
            n: s.ndcg(s.chunk_ranking(s.bm25_scores(k1, b, avgdl_of(s)), positive_only=True))
            for n, s in scorers.items()
        }
        avgdl_rows.append({"avgdl": label, "ndcg@10": _rounded(values), "worst_vs_bm25s": _worst(values, bm25s_bar)})

    # The unit size (window) at the chosen BM25 and fusion: BM25 mode against bm25s, hybrid against the bar.
    window_rows = []
    chosen_fuser = ConvexFuser(final["alpha"], depth=final["depth"], normalisation=final["normalisation"])
    for size in WINDOWS:
        bm25_values, hybrid_values, unit_counts = {}, {}, {}
        for n, s in scorers.items():
            sized = s if size == window else Scorer(s.corpus, size)
            scores = sized.bm25_scores(k1, b, sized.lexical.avgdl)
            bm25_values[n] = sized.ndcg(sized.chunk_ranking(scores, positive_only=True))
            hybrid_values[n] = sized.fused(sized.shard_results(scores, final["depth"]), chosen_fuser)
            unit_counts[n] = len(sized.unit_docs)
        window_rows.append(
            {
                "window": size,
                "units": unit_counts,
                "bm25": _rounded(bm25_values),
                "hybrid": _rounded(hybrid_values),
                "bm25_worst_vs_bm25s": _worst(bm25_values, bm25s_bar),
                "hybrid_worst_vs_reference": _worst(hybrid_values, fusion_bar),
            }
        )
    _progress("windows: done")

    # Not shipped, measured for the next step: one lexical row per unit with document-level fusion (window > 0).
    variant_rows = []
    if window > 0:
        for vk1, vb in ((k1, b), (1.2, 0.75)):
            for how, alpha in (("zscore", 0.5), ("zscore", 0.6), ("minmax", 0.5), ("minmax", 0.6)):
                values = {n: one_row_per_unit(s, vk1, vb, how, alpha, MAX_SHIPPED_DEPTH) for n, s in scorers.items()}
                variant_rows.append(
                    {
                        "k1": vk1,
                        "b": vb,
                        "normalisation": how,
                        "alpha": alpha,
                        "depth": MAX_SHIPPED_DEPTH,
                        "ndcg@10": _rounded(values),
                        "worst_vs_reference": _worst(values, fusion_bar),
                    }
                )

    return {
        "window": window,
        "corpora": corpora,
        "rule": {
            "bm25": "max over (k1, b) of min over corpora of (chunk BM25 nDCG@10 - bm25s nDCG@10), measured avgdl",
            "fusion": "max over (method, weight, depth) of min over corpora of (hybrid nDCG@10 - reference fusion), "
            "at the BM25 chosen alone",
            "final": "over (k1, b) x the best fusions at depth <= 100 keeping SciFact hybrid >= 0.737: within 0.001 "
            "of the best min over corpora of (hybrid - reference fusion), the best min over corpora of (BM25 mode - "
            "bm25s)",
        },
        "chosen": {
            "bm25": {"k1": k1, "b": b, "avgdl": "measured", "ndcg@10": _rounded(bm25_only)},
            "bm25_alone_best": {"k1": best_bm25["k1"], "b": best_bm25["b"], "ndcg@10": best_bm25["ndcg@10"]},
            "fusion_at_bm25_alone_best": best_fusion,
            "fusion": {
                k: final[k] for k in ("kind", "normalisation", "alpha", "depth", "ndcg@10", "worst_vs_reference")
            },
            "dense_only": _rounded(dense_only),
            "bm25_only": _rounded(bm25_only),
        },
        "bm25_grid": bm25_grid,
        "avgdl": avgdl_rows,
        "one_row_per_unit": variant_rows,
        "windows": window_rows,
        "fusion_grid": fusion_grid,
        "joint": joint,
    }


# -- report ----------------------------------------------------------------------------------------------------


def _cells(values: dict[str, float], names: Sequence[str]) -> str:
    return " | ".join(f"{values[n]:.3f}" for n in names)


def markdown(result: dict[str, Any], command: str, commit: str) -> str:
    names = list(result["corpora"])
    head = " | ".join(names)
    rule = "|".join(["---"] * (len(names) + 2))
    window = result["window"]
    units = f"lexical units of at most {window} BM25 terms" if window else "BM25 per chunk (window 0)"
    lines = [f"Command: `{command}` (commit {commit}). nDCG@10; documents at their best chunk; {units}.", ""]
    lines += [
        "| corpus | documents | chunks | lexical units | queries | measured avgdl | bm25s | chunk-dense | "
        "reference fusion |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for n, c in result["corpora"].items():
        r = c["references"]
        lines.append(
            f"| {n} ({c['split']}) | {c['documents']} | {c['chunks']} | {c['lexical_units']} | {c['queries']} | "
            f"{c['measured_avgdl']} | "
            f"{r['bm25s']:.3f} | {r['chunk_dense']:.3f} | {r['reference_fusion']:.3f} |"
        )
    chosen = result["chosen"]
    f = chosen["fusion"]

    def refs(key: str) -> dict[str, float]:
        return {n: result["corpora"][n]["references"][key] for n in names}

    def row(label: str, values: dict[str, float], *rest: str) -> str:
        return "| " + " | ".join([label, _cells(values, names), *rest]) + " |"

    bm25 = f"BM25 k1 {chosen['bm25']['k1']}, b {chosen['bm25']['b']}, measured avgdl"
    label = (
        f"hybrid {f['normalisation']} alpha {f['alpha']}, {f['depth']} per modality"
        if f["kind"] == "convex"
        else f"hybrid RRF k {f['rrf_k']}, {f['depth']} per modality"
    )
    lines += ["", "Chosen defaults, each corpus side by side:", "", f"| system | {head} |", f"|{rule[4:]}|"]
    lines.append(row("dense (chunks)", chosen["dense_only"]))
    lines.append(row(bm25, chosen["bm25_only"]))
    lines.append(row("bm25s (whole documents)", refs("bm25s")))
    lines.append(row(label, f["ndcg@10"]))
    lines.append(row("reference fusion", refs("reference_fusion")))
    lines += ["", "BM25 (measured avgdl): k1 x b, worst margin over bm25s across corpora:", ""]
    lines += [f"| k1 | b | {head} | worst vs bm25s |", "|---|---|" + "---|" * len(names) + "---|"]
    for r in sorted(result["bm25_grid"], key=lambda r: -r["worst_vs_bm25s"])[:12]:
        lines.append(row(f"{r['k1']} | {r['b']}", r["ndcg@10"], f"{r['worst_vs_bm25s']:+.4f}"))
    lines += ["", f"avgdl at k1 {chosen['bm25']['k1']}, b {chosen['bm25']['b']}:", ""]
    lines += [f"| avgdl | {head} | worst vs bm25s |", "|---|" + "---|" * len(names) + "---|"]
    for r in result["avgdl"]:
        lines.append(row(r["avgdl"], r["ndcg@10"], f"{r['worst_vs_bm25s']:+.4f}"))
    alone = chosen["bm25_alone_best"]
    lines += [
        "",
        f"Fusion at the BM25 chosen alone (k1 {alone['k1']}, b {alone['b']}): best of each method (by its worst "
        "margin over the reference fusion), then every weight:",
        "",
    ]
    lines += [
        f"| method | weight / k | depth | {head} | worst vs reference |",
        "|---|---|---|" + "---|" * len(names) + "---|",
    ]
    methods: dict[str, dict[str, Any]] = {}
    for r in result["fusion_grid"]:
        method = r["normalisation"] if r["kind"] == "convex" else "rrf"
        if method not in methods or r["worst_vs_reference"] > methods[method]["worst_vs_reference"]:
            methods[method] = r
    for r in [*methods.values(), *(r for r in result["fusion_grid"] if r not in methods.values())]:
        method = f"convex {r['normalisation']}" if r["kind"] == "convex" else "RRF"
        weight = r.get("alpha", r.get("rrf_k"))
        lines.append(row(f"{method} | {weight} | {r['depth']}", r["ndcg@10"], f"{r['worst_vs_reference']:+.4f}"))
    if result.get("windows"):
        slashed = " / ".join(names)
        lines += [
            "",
            f"Lexical unit size (window) at k1 {chosen['bm25']['k1']}, b {chosen['bm25']['b']} and the chosen fusion "
            "(0: BM25 per chunk):",
            "",
            f"| window | units ({slashed}) | BM25 ({slashed}) | BM25 worst vs bm25s | hybrid ({slashed}) | "
            "hybrid worst vs reference |",
            "|---|---|---|---|---|---|",
        ]
        for r in result.get("windows", []):
            units = " / ".join(str(r["units"][n]) for n in names)
            bm25_cells = " / ".join(f"{r['bm25'][n]:.3f}" for n in names)
            hybrid_cells = " / ".join(f"{r['hybrid'][n]:.3f}" for n in names)
            lines.append(
                f"| {r['window']} | {units} | {bm25_cells} | {r['bm25_worst_vs_bm25s']:+.4f} | {hybrid_cells} | "
                f"{r['hybrid_worst_vs_reference']:+.4f} |"
            )
    if result.get("one_row_per_unit"):
        lines += [
            "",
            "Not shipped: one lexical row per unit (the lexical top 100 then holds 100 distinct units) and fusion "
            "giving a chunk its document's best lexical score:",
            "",
            f"| k1 | b | fusion | depth | {head} | worst vs reference |",
            "|---|---|---|---|" + "---|" * len(names) + "---|",
        ]
        for r in result["one_row_per_unit"]:
            label = f"{r['k1']} | {r['b']} | {r['normalisation']} {r['alpha']} | {r['depth']}"
            lines.append(row(label, r["ndcg@10"], f"{r['worst_vs_reference']:+.4f}"))
    lines += ["", "BM25 and fusion together (hybrid), the 15 best by the worst margin over the reference fusion:", ""]
    lines += [
        f"| k1 | b | fusion | depth | {head} | hybrid worst vs reference | BM25 worst vs bm25s |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for r in sorted(result["joint"], key=lambda r: -r["worst_vs_reference"])[:15]:
        label = f"{r['k1']} | {r['b']} | {r['normalisation']} {r['alpha']} | {r['depth']}"
        lines.append(row(label, r["ndcg@10"], f"{r['worst_vs_reference']:+.4f}", f"{r['bm25_worst_vs_bm25s']:+.4f}"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_study", description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", default=",".join(c[0] for c in CORPORA), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval_study.json")
    parser.add_argument(
        "--window",
        type=int,
        default=Bm25Settings().window,
        help="most BM25 terms of a lexical unit (0: BM25 per chunk); default: the shipped setting",
    )
    args = parser.parse_args(argv)
    import subprocess

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench.retrieval_study", *given])
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
