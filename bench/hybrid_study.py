"""Offline study: how should ShardRAG's hybrid (dense + BM25) retrieval work over 128-token chunks?

Everything is computed in numpy/scipy from a cache of SciFact chunks and their dense embeddings
(``/tmp/scifact_cache``: chunks.jsonl, dense.npy, queries.npy, query_ids.json), so the numbers isolate
the *retrieval maths* from the serving stack.

Evaluation: BEIR nDCG@10 (linear graded gain, log2 discount, trec_eval style) and Recall@100 at DOCUMENT
level over the 300 judged SciFact test queries; a document is scored by its best chunk.

What is measured
  0. Baseline: the ``bm25s`` library on WHOLE abstracts (title + " " + text), ``bm25s.BM25()`` defaults,
     English stemmer, stopwords "en"; plus this script's own sparse BM25 on whole abstracts (sanity check).
  1. Chunk-level BM25 exactly as the product stores it (sparse vectors, inner-product scoring):
     tokens = bm25s default tokenisation (lowercase, r"(?u)\\b\\w\\w+\\b", bm25s STOPWORDS_EN, PyStemmer english);
     chunk weight(t) = tf*(k1+1) / (tf + k1*(1-b+b*len/avgdl)); query weight(t) = ln(1+(N-df+0.5)/(df+0.5))
     with N/df counted over chunks. Grid: text in {embedding_text (title-prefixed), text only},
     k1 in {0.9,1.2,1.5}, b in {0.4,0.75}, query terms counted per occurrence ("qtf") or once ("uniq").
     Plus simple product-feasible alternatives (document-length normalisation, doc-level idf, title boost).
  2. Dense alone over chunks (cosine of L2-normalised all-MiniLM-L6-v2 vectors).
  3. Hybrid fusion with candidates = top-K chunks per modality (default K=100):
     chunk-level / doc-level convex combination fused = alpha*dense + (1-alpha)*bm25 after normalising each
     modality over its own candidate list (min-max, missing -> 0; z-score, missing -> that list's lowest z;
     divide-by-max, missing -> 0), documents ranked by best fused chunk (chunk level) or fused after max-pooling
     each modality to documents (doc level); RRF (k=20, 60) at chunk and doc level. The BM25 side is the best
     configuration of the requested chunk grid. Hybrid Recall@100 is over the fused candidate documents.
  4. Sensitivity of chunk BM25 to a mis-estimated avgdl (x0.7, x1.3).

Run: ``.venv/bin/python bench/hybrid_study.py``
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
import scipy.sparse as sp
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

CACHE = Path("/tmp/scifact_cache")
DATA = Path("/work/shared/datasets/scifact")
TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")
STOP = frozenset(STOPWORDS_EN)

FloatArray = np.ndarray
Qrels = dict[str, dict[str, int]]


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Data:
    chunk_doc: np.ndarray  # [n_chunks] int doc index
    doc_ids: list[str]  # doc index -> corpus id
    chunk_text: list[str]  # chunk text only
    chunk_emb_text: list[str]  # title + "\n" + text
    chunk_title: list[str]
    doc_full: list[str]  # title + " " + abstract, per doc index
    dense: FloatArray | None  # [n_chunks, 384]; None while the embedding cache is still being built
    qvec: FloatArray  # [n_q, 384]
    qids: list[str]
    qtext: list[str]
    qrels: Qrels


def load() -> Data:
    chunks = [json.loads(line) for line in (CACHE / "chunks.jsonl").open()]
    doc_index: dict[str, int] = {}
    for c in chunks:
        doc_index.setdefault(c["doc_id"], len(doc_index))
    corpus = {d["_id"]: d for d in map(json.loads, (DATA / "corpus.jsonl").open())}
    doc_ids = list(doc_index)
    qrels: Qrels = {}
    with (DATA / "qrels" / "test.tsv").open() as f:
        next(f)
        for line in f:
            q, d, s = line.rstrip("\n").split("\t")
            qrels.setdefault(q, {})[d] = int(s)
    all_q = {q["_id"]: q["text"] for q in map(json.loads, (DATA / "queries.jsonl").open())}
    cached_qids: list[str] = json.loads((CACHE / "query_ids.json").read_text())
    qvec_all = np.load(CACHE / "queries.npy")
    keep = [i for i, q in enumerate(cached_qids) if q in qrels]
    qids = [cached_qids[i] for i in keep]
    return Data(
        chunk_doc=np.array([doc_index[c["doc_id"]] for c in chunks]),
        doc_ids=doc_ids,
        chunk_text=[c["text"] for c in chunks],
        chunk_emb_text=[c["embedding_text"] for c in chunks],
        chunk_title=[c["title"] for c in chunks],
        doc_full=[corpus[d]["title"] + " " + corpus[d]["text"] for d in doc_ids],
        dense=np.load(CACHE / "dense.npy").astype(np.float32) if (CACHE / "dense.npy").exists() else None,
        qvec=qvec_all[keep].astype(np.float32),
        qids=qids,
        qtext=[all_q[q] for q in qids],
        qrels=qrels,
    )


# ----------------------------------------------------------------------------- metrics


def ndcg_at_10(ranked: list[str], rel: dict[str, int]) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:10]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_100(ranked: list[str], rel: dict[str, int]) -> float:
    pos = {d for d, r in rel.items() if r > 0}
    return len(pos & set(ranked[:100])) / len(pos)


PER_QUERY: dict[str, np.ndarray] = {}  # last evaluated run's per-query nDCG@10, keyed by Table label


def evaluate(runs: list[list[str]], data: Data) -> tuple[float, float, np.ndarray]:
    nd = np.array([ndcg_at_10(r, data.qrels[q]) for r, q in zip(runs, data.qids, strict=True)])
    rc = [recall_at_100(r, data.qrels[q]) for r, q in zip(runs, data.qids, strict=True)]
    return float(np.mean(nd)), float(np.mean(rc)), nd


# ----------------------------------------------------------------------------- BM25 (product maths)

_stemmer = Stemmer.Stemmer("english")


def tokenize(text: str) -> list[str]:
    """bm25s default tokenisation: lowercase, regex, drop STOPWORDS_EN (pre-stem), English Snowball stem."""
    words = [w for w in TOKEN_RE.findall(text.lower()) if w not in STOP]
    return list(_stemmer.stemWords(words))


class Vocab:
    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def get(self, tok: str, add: bool) -> int | None:
        if tok not in self.ids and add:
            self.ids[tok] = len(self.ids)
        return self.ids.get(tok)


@dataclass
class TermCounts:
    """Sparse tf matrix [n_units, V] plus per-unit token lengths (after stopword removal)."""

    tf: sp.csr_matrix
    length: FloatArray


def count_terms(token_lists: Iterable[list[str]], vocab: Vocab, extra: list[Counter[str]] | None = None) -> TermCounts:
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lengths: list[float] = []
    for i, toks in enumerate(token_lists):
        cnt: Counter[str] = Counter(toks)
        length = float(len(toks))
        if extra is not None:
            for t, v in extra[i].items():
                cnt[t] += v  # type: ignore[assignment]
                length += v
        for t, v in cnt.items():
            j = vocab.get(t, add=True)
            assert j is not None
            rows.append(i)
            cols.append(j)
            vals.append(float(v))
        lengths.append(length)
    n = len(lengths)
    tf = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(vocab.ids)), dtype=np.float64)
    return TermCounts(tf=tf, length=np.array(lengths))


def idf(df: FloatArray, n: float) -> FloatArray:
    return np.log(1.0 + (n - df + 0.5) / (df + 0.5))


def doc_weights(tc: TermCounts, k1: float, b: float, avgdl: float, length: FloatArray | None = None) -> sp.csr_matrix:
    """tf*(k1+1)/(tf + k1*(1-b+b*len/avgdl)); ``length`` overrides the unit's own length (doc-length norm)."""
    lens = tc.length if length is None else length
    norm = k1 * (1.0 - b + b * lens / avgdl)  # per row
    w = tc.tf.copy()
    row_norm = np.repeat(norm, np.diff(w.indptr))
    w.data = w.data * (k1 + 1.0) / (w.data + row_norm)
    return w


def query_matrix(queries: list[str], vocab: Vocab, idf_vec: FloatArray, unique: bool) -> sp.csr_matrix:
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, q in enumerate(queries):
        toks = tokenize(q)
        cnt = Counter(toks)
        for t, c in cnt.items():
            j = vocab.get(t, add=False)
            if j is None:
                continue
            rows.append(i)
            cols.append(j)
            vals.append(idf_vec[j] * (1.0 if unique else c))
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(queries), len(vocab.ids)))


def bm25_scores(q: sp.csr_matrix, w: sp.csr_matrix) -> FloatArray:
    return np.asarray((q @ w.T).todense(), dtype=np.float64)


# ----------------------------------------------------------------------------- ranking helpers


class Docs:
    """Aggregation of chunk score matrices to documents (chunks are contiguous per document)."""

    def __init__(self, data: Data) -> None:
        self.data = data
        cd = data.chunk_doc
        self.starts = np.flatnonzero(np.r_[True, cd[1:] != cd[:-1]])
        self.start_doc = cd[self.starts]

    def max_per_doc(self, scores: FloatArray) -> FloatArray:
        agg = np.maximum.reduceat(scores, self.starts, axis=1)
        out = np.full((scores.shape[0], len(self.data.doc_ids)), -np.inf)
        out[:, self.start_doc] = agg
        return out

    def rank_full(self, doc_scores: FloatArray, k: int = 100) -> list[list[str]]:
        top = np.argsort(-doc_scores, axis=1, kind="stable")[:, :k]
        return [[self.data.doc_ids[j] for j in row] for row in top]


def topk(scores: FloatArray, k: int) -> np.ndarray:
    """Indices of the top-k columns per row, sorted by descending score."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def rank_dict(scores: dict[int, float], doc_ids: list[str], k: int = 100) -> list[str]:
    return [doc_ids[d] for d, _ in sorted(scores.items(), key=lambda x: -x[1])[:k]]


# ----------------------------------------------------------------------------- fusion

Normaliser = Callable[[FloatArray], tuple[FloatArray, float]]


def norm_minmax(s: FloatArray) -> tuple[FloatArray, float]:
    lo, hi = float(s.min()), float(s.max())
    return ((s - lo) / (hi - lo) if hi > lo else np.ones_like(s)), 0.0


def norm_z(s: FloatArray) -> tuple[FloatArray, float]:
    sd = float(s.std()) or 1.0
    z = (s - s.mean()) / sd
    return z, float(z.min())  # a candidate missing from this list gets the list's lowest z


def norm_max(s: FloatArray) -> tuple[FloatArray, float]:
    hi = float(s.max()) or 1.0
    return s / hi, 0.0


NORMS: dict[str, Normaliser] = {"minmax": norm_minmax, "z": norm_z, "max": norm_max}


@dataclass
class Candidates:
    """Per query: top-K chunk ids and scores for each modality."""

    d_idx: np.ndarray
    d_sc: FloatArray
    b_idx: np.ndarray
    b_sc: FloatArray


def candidates(dense: FloatArray, bm25: FloatArray, k: int) -> Candidates:
    di, bi = topk(dense, k), topk(bm25, k)
    return Candidates(di, np.take_along_axis(dense, di, 1), bi, np.take_along_axis(bm25, bi, 1))


def to_docs(idx: np.ndarray, sc: FloatArray, chunk_doc: np.ndarray) -> dict[int, float]:
    out: dict[int, float] = {}
    for c, s in zip(idx.tolist(), sc.tolist(), strict=True):
        d = int(chunk_doc[c])
        if d not in out or s > out[d]:
            out[d] = s
    return out


def fuse_convex(cands: Candidates, data: Data, alpha: float, norm: str, level: str) -> list[list[str]]:
    f = NORMS[norm]
    runs: list[list[str]] = []
    for qi in range(cands.d_idx.shape[0]):
        if level == "chunk":
            d_keys, d_raw = cands.d_idx[qi].tolist(), cands.d_sc[qi]
            b_keys, b_raw = cands.b_idx[qi].tolist(), cands.b_sc[qi]
        else:
            dd = to_docs(cands.d_idx[qi], cands.d_sc[qi], data.chunk_doc)
            bd = to_docs(cands.b_idx[qi], cands.b_sc[qi], data.chunk_doc)
            d_keys, d_raw = list(dd), np.array(list(dd.values()))
            b_keys, b_raw = list(bd), np.array(list(bd.values()))
        dn, d_miss = f(d_raw)
        bn, b_miss = f(b_raw)
        dmap = dict(zip(d_keys, dn.tolist(), strict=True))
        bmap = dict(zip(b_keys, bn.tolist(), strict=True))
        fused = {key: alpha * dmap.get(key, d_miss) + (1 - alpha) * bmap.get(key, b_miss) for key in dmap | bmap}
        if level == "chunk":
            doc_sc: dict[int, float] = {}
            for c, s in fused.items():
                d = int(data.chunk_doc[c])
                if d not in doc_sc or s > doc_sc[d]:
                    doc_sc[d] = s
        else:
            doc_sc = fused
        runs.append(rank_dict(doc_sc, data.doc_ids))
    return runs


def fuse_rrf(cands: Candidates, data: Data, k: int, level: str) -> list[list[str]]:
    runs: list[list[str]] = []
    for qi in range(cands.d_idx.shape[0]):
        fused: dict[int, float] = {}
        for idx, sc in ((cands.d_idx[qi], cands.d_sc[qi]), (cands.b_idx[qi], cands.b_sc[qi])):
            if level == "chunk":
                keys = idx.tolist()
            else:
                dd = to_docs(idx, sc, data.chunk_doc)
                keys = [d for d, _ in sorted(dd.items(), key=lambda x: -x[1])]
            for r, key in enumerate(keys):
                fused[key] = fused.get(key, 0.0) + 1.0 / (k + r + 1)
        if level == "chunk":
            doc_sc: dict[int, float] = {}
            for c, s in fused.items():
                d = int(data.chunk_doc[c])
                doc_sc[d] = max(doc_sc.get(d, 0.0), s)
        else:
            doc_sc = fused
        runs.append(rank_dict(doc_sc, data.doc_ids))
    return runs


# ----------------------------------------------------------------------------- main


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float | None]] = []

    def add(
        self, section: str, name: str, ndcg: float, recall: float | None = None, per_q: np.ndarray | None = None
    ) -> None:
        self.rows.append((section, name, ndcg, recall))
        if per_q is not None:
            PER_QUERY[name] = per_q
        rc = f"{recall:.4f}" if recall is not None else "   -  "
        print(f"  {section:<10} {name:<70} nDCG@10 {ndcg:.4f}  R@100 {rc}", flush=True)


def bm25s_baseline(data: Data) -> list[list[str]]:
    stemmer = Stemmer.Stemmer("english")
    corpus_tokens = bm25s.tokenize(data.doc_full, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=False)
    q_tokens = bm25s.tokenize(data.qtext, stopwords="en", stemmer=stemmer, show_progress=False)
    res, _ = retriever.retrieve(q_tokens, k=100, show_progress=False, n_threads=1)
    return [[data.doc_ids[int(j)] for j in row] for row in res]


def main() -> None:
    t0 = time.time()
    data = load()
    docs = Docs(data)
    table = Table()
    print(f"{len(data.chunk_doc)} chunks, {len(data.doc_ids)} docs, {len(data.qids)} test queries", flush=True)

    # 0. baselines on whole abstracts
    table.add(
        "baseline", "bm25s library, whole abstract (title+' '+text), defaults", *evaluate(bm25s_baseline(data), data)
    )
    vocab_doc = Vocab()
    tc_doc = count_terms((tokenize(t) for t in data.doc_full), vocab_doc)
    idf_doc = idf(np.asarray((tc_doc.tf > 0).sum(axis=0)).ravel(), tc_doc.tf.shape[0])
    w_doc = doc_weights(tc_doc, 1.5, 0.75, float(tc_doc.length.mean()))
    for unique in (False, True):
        s = bm25_scores(query_matrix(data.qtext, vocab_doc, idf_doc, unique), w_doc)
        table.add(
            "baseline",
            f"own sparse BM25, whole abstract, k1=1.5 b=0.75 q={'uniq' if unique else 'qtf'}",
            *evaluate(docs.rank_full(s), data),
        )

    # 1. chunk BM25 grid
    tok_text = [tokenize(t) for t in data.chunk_text]
    tok_title = [tokenize(t) for t in data.chunk_title]
    variants: dict[str, tuple[TermCounts, Vocab]] = {}
    for name, toks in (("emb_text", [a + b for a, b in zip(tok_title, tok_text, strict=True)]), ("text", tok_text)):
        v = Vocab()
        variants[name] = (count_terms(toks, v), v)
    n_chunks = float(len(data.chunk_doc))
    best: tuple[float, str, FloatArray] = (-1.0, "", np.empty(0))
    for name, (tc, v) in variants.items():
        idf_c = idf(np.asarray((tc.tf > 0).sum(axis=0)).ravel(), n_chunks)
        avgdl = float(tc.length.mean())
        for k1 in (0.9, 1.2, 1.5):
            for b in (0.4, 0.75):
                w = doc_weights(tc, k1, b, avgdl)
                for unique in (False, True):
                    s = bm25_scores(query_matrix(data.qtext, v, idf_c, unique), w)
                    label = f"chunk={name} k1={k1} b={b} q={'uniq' if unique else 'qtf'} (avgdl={avgdl:.1f})"
                    nd, rc, pq = evaluate(docs.rank_full(docs.max_per_doc(s)), data)
                    table.add("bm25-chunk", label, nd, rc, pq)
                    if nd > best[0]:
                        best = (nd, label, s)

    # 1a. finer b sweep on embedding_text (outside the requested grid; not used to pick the hybrid BM25 side)
    tc, v = variants["emb_text"]
    df_chunk = np.asarray((tc.tf > 0).sum(axis=0)).ravel()
    idf_c = idf(df_chunk, n_chunks)
    avgdl = float(tc.length.mean())
    for k1 in (0.9, 1.2):
        for b in (0.0, 0.2, 0.3, 0.5):
            w = doc_weights(tc, k1, b, avgdl)
            for unique in (False, True):
                s = bm25_scores(query_matrix(data.qtext, v, idf_c, unique), w)
                table.add(
                    "bm25-b",
                    f"chunk=emb_text k1={k1} b={b} q={'uniq' if unique else 'qtf'}",
                    *evaluate(docs.rank_full(docs.max_per_doc(s)), data),
                )

    # 1b. product-feasible alternatives (embedding_text, q=qtf)
    doc_len_true = tc_doc.length  # token length of the whole (title + abstract) document
    chunk_doc_len = doc_len_true[data.chunk_doc]
    qm = query_matrix(data.qtext, v, idf_c, False)
    for k1, b in ((1.2, 0.4), (1.2, 0.75)):
        w = doc_weights(tc, k1, b, float(doc_len_true.mean()), length=chunk_doc_len)
        table.add(
            "bm25-alt",
            f"A doc-length norm: len=whole-doc len, avgdl=mean doc len, k1={k1} b={b}",
            *evaluate(docs.rank_full(docs.max_per_doc(bm25_scores(qm, w))), data),
        )
    # doc-level df (N = docs, df = docs containing t): computable at ingest from per-doc term sets
    doc_term = sp.csr_matrix((np.ones(tc.tf.nnz), tc.tf.indices, tc.tf.indptr), shape=tc.tf.shape)
    per_doc = (
        sp.csr_matrix(
            (np.ones(len(data.chunk_doc)), (data.chunk_doc, np.arange(len(data.chunk_doc)))),
            shape=(len(data.doc_ids), len(data.chunk_doc)),
        )
        @ doc_term
    )
    df_doc = np.asarray((per_doc > 0).sum(axis=0)).ravel()
    idf_d = idf(df_doc, float(len(data.doc_ids)))
    for k1, b in ((1.2, 0.4), (1.2, 0.75)):
        w = doc_weights(tc, k1, b, avgdl)
        s = bm25_scores(query_matrix(data.qtext, v, idf_d, False), w)
        table.add(
            "bm25-alt",
            f"B doc-level idf (N=docs, df=docs with t), chunk tf/len, k1={k1} b={b}",
            *evaluate(docs.rank_full(docs.max_per_doc(s)), data),
        )
    for tw, b in ((0.5, 0.4), (2.0, 0.4), (3.0, 0.4), (2.0, 0.75)):
        # title tokens counted tw times (instead of once) in every chunk's tf and length
        extra = [Counter({t: (tw - 1.0) * c for t, c in Counter(ti).items()}) for ti in tok_title]
        v2 = Vocab()
        tc2 = count_terms([a + b for a, b in zip(tok_title, tok_text, strict=True)], v2, extra=extra)
        idf2 = idf(np.asarray((tc2.tf > 0).sum(axis=0)).ravel(), n_chunks)
        w = doc_weights(tc2, 1.2, b, float(tc2.length.mean()))
        s = bm25_scores(query_matrix(data.qtext, v2, idf2, False), w)
        table.add(
            "bm25-alt",
            f"C title tf weight x{tw:g} in chunk, k1=1.2 b={b}",
            *evaluate(docs.rank_full(docs.max_per_doc(s)), data),
        )
    # D: doc aggregation max + 0.1*sum(rest) (query-time only)
    w = doc_weights(tc, 1.2, 0.4, avgdl)
    s = bm25_scores(qm, w)
    mx = docs.max_per_doc(s)
    sm = np.zeros_like(mx)
    sm[:, docs.start_doc] = np.add.reduceat(s, docs.starts, axis=1)
    for lam in (0.1, 0.3):
        table.add(
            "bm25-alt",
            f"D doc score = max chunk + {lam}*(sum of other chunks), k1=1.2 b=0.4",
            *evaluate(docs.rank_full(mx + lam * (sm - mx)), data),
        )

    # 4. avgdl sensitivity (for the best chunk config)
    print(f"best chunk BM25: {best[1]} -> {best[0]:.4f}", flush=True)
    m = re.search(r"chunk=(\S+) k1=(\S+) b=(\S+) q=(\S+)", best[1])
    assert m
    bname, bk1, bb, bq = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)
    btc, bv = variants[bname]
    bidf = idf(np.asarray((btc.tf > 0).sum(axis=0)).ravel(), n_chunks)
    bqm = query_matrix(data.qtext, bv, bidf, bq == "uniq")
    for fac in (0.7, 0.85, 1.0, 1.15, 1.3):
        w = doc_weights(btc, bk1, bb, float(btc.length.mean()) * fac)
        table.add(
            "avgdl",
            f"{bname} k1={bk1} b={bb} q={bq}, avgdl x{fac}",
            *evaluate(docs.rank_full(docs.max_per_doc(bm25_scores(bqm, w))), data),
        )

    # 2. dense
    if data.dense is None:
        print("dense.npy not available yet: skipping dense and hybrid sections")
        return
    dense = (data.qvec @ data.dense.T).astype(np.float64)
    table.add("dense", "dense over chunks, doc = best chunk", *evaluate(docs.rank_full(docs.max_per_doc(dense)), data))

    # 3. hybrid
    bm25_main = best[2]
    hyb_best: tuple[float, str] = (-1.0, "")

    def rec(name: str, runs: list[list[str]]) -> None:
        nonlocal hyb_best
        nd, rc, pq = evaluate(runs, data)
        table.add("hybrid", name, nd, rc, pq)
        if nd > hyb_best[0]:
            hyb_best = (nd, name)

    for depth in (100, 50, 200):
        cands = candidates(dense, bm25_main, depth)
        for level in ("chunk", "doc"):
            for norm in NORMS:
                for alpha in (0.3, 0.4, 0.5, 0.6, 0.7):
                    rec(f"K={depth} {level}-convex {norm} alpha={alpha}", fuse_convex(cands, data, alpha, norm, level))
            for k in (20, 60):
                rec(f"K={depth} {level}-RRF k={k}", fuse_rrf(cands, data, k, level))
    # BM25 side with per-occurrence query weights, for the best hybrid variant (same depth)
    m2 = re.search(r"K=(\d+) (\S+)-convex (\S+) alpha=(\S+)", hyb_best[1])
    if m2 and bq == "uniq":
        qtf_s = bm25_scores(
            query_matrix(data.qtext, bv, bidf, False), doc_weights(btc, bk1, bb, float(btc.length.mean()))
        )
        depth, level, norm = int(m2.group(1)), m2.group(2), m2.group(3)
        cands = candidates(dense, qtf_s, depth)
        for alpha in (0.5, 0.6, 0.7):
            rec(
                f"[bm25 q=qtf] K={depth} {level}-convex {norm} alpha={alpha}",
                fuse_convex(cands, data, alpha, norm, level),
            )

    print("\npaired differences (mean delta nDCG@10 +- 1.96*s.e. over 300 queries):")
    pairs = [
        (best[1], "bm25s library, whole abstract (title+' '+text), defaults"),
        (hyb_best[1], "dense over chunks, doc = best chunk"),
        (hyb_best[1], "K=100 chunk-RRF k=60"),
        ("K=100 chunk-convex z alpha=0.6", "K=100 chunk-convex minmax alpha=0.6"),
        (hyb_best[1], "K=100 chunk-convex minmax alpha=0.6"),
    ]
    for a, b2 in pairs:
        if a in PER_QUERY and b2 in PER_QUERY and a != b2:
            d = PER_QUERY[a] - PER_QUERY[b2]
            print(f"  {a}  vs  {b2}: {d.mean():+.4f} +- {1.96 * d.std(ddof=1) / math.sqrt(len(d)):.4f}")
    print(f"\nbest hybrid: {hyb_best[1]} -> {hyb_best[0]:.4f}")
    print(f"(hybrid BM25 side = {best[1]})")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
