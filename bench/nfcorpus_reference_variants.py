"""Variants of the NFCorpus dev reference fusion (issue 14): which reading of the dataset README's recipe gives
both its 0.341 (min-max, 0.5 / 0.5) and its 0.339 (0.6 / 0.4)?

Reuses ``bench.nfcorpus_reference``'s chunk embeddings (``build/nfcorpus-reference.npz``: plain 128/32 model-token
windows, title prefixed, the shipped ONNX model) and, for whole-document dense, ``build/nfcorpus-whole-doc.npy``
(title + text, truncated at 256 tokens; embedded on first use). Prints one JSON line: nDCG@10 per variant at dense
weight 0.5 and 0.6.

Usage::

    OMP_NUM_THREADS=1 python -m bench.nfcorpus_reference_variants
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np

from bench.nfcorpus_reference import CACHE, ROOT, _dense, _ndcg10, load

WHOLE = ROOT / "build" / "nfcorpus-whole-doc.npy"


def _whole(corpus: list[dict[str, Any]]) -> np.ndarray:
    if WHOLE.is_file():
        return np.load(WHOLE)
    from shardrag.embedding.onnx import OnnxEmbedder

    model = OnnxEmbedder(ROOT / "build" / "model", batch_size=32, max_seq_length=256, threads=1)
    texts = [f"{d['title']} {d['text']}".strip() for d in corpus]
    vectors = np.concatenate([model.embed(texts[k : k + 512]) for k in range(0, len(texts), 512)])
    np.save(WHOLE, vectors)
    return vectors


def _minmax(values: np.ndarray) -> np.ndarray:
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def _scaled(scores: np.ndarray, top: np.ndarray, *, own: bool) -> np.ndarray:
    """Every document's score min-max scaled by the top list's min and max: a document outside the list keeps
    its own scaled score (``own``) or scores 0."""
    out = np.zeros(len(scores))
    if not len(top):
        return out
    values = scores[top]
    low, span = values.min(), values.max() - values.min()
    if own:
        return (scores - low) / span if span > 0 else np.ones(len(scores))
    out[top] = (values - low) / span if span > 0 else 1.0
    return out


def main() -> None:
    import bm25s
    import Stemmer

    corpus, questions, judged, query_ids, ids = load()
    n_docs = len(ids)
    assert CACHE.is_file()
    vectors, owner, asked = _dense(corpus, [questions[q] for q in query_ids])
    whole = _whole(corpus)

    stemmer = Stemmer.Stemmer("english")
    texts = [f"{d['title']} {d['text']}" for d in corpus]
    lexical_runs: dict[str, np.ndarray] = {}
    for method, stop in itertools.product(("lucene", "robertson", "atire", "bm25l", "bm25+"), ("en", None)):
        model = bm25s.BM25(k1=1.5, b=0.75, method=method)
        model.index(bm25s.tokenize(texts, stopwords=stop, stemmer=stemmer, show_progress=False), show_progress=False)
        tokens = bm25s.tokenize([questions[q] for q in query_ids], stopwords=stop, stemmer=stemmer, show_progress=False)
        docs, values = model.retrieve(tokens, k=n_docs, show_progress=False)
        scores = np.zeros((len(query_ids), n_docs))
        for n in range(len(query_ids)):
            scores[n, docs[n]] = values[n]
        lexical_runs[f"{method}/{stop or 'nostop'}"] = scores

    chunk_scores = vectors @ asked.T  # chunks x queries
    results: dict[str, list[float]] = {}

    def record(name: str, ranked: list[int], n: int) -> None:
        results.setdefault(name, []).append(_ndcg10([ids[i] for i in ranked], judged[query_ids[n]]))

    for n in range(len(query_ids)):
        per_chunk = chunk_scores[:, n]
        dense_doc = np.full(n_docs, -np.inf)
        np.maximum.at(dense_doc, owner, per_chunk)
        whole_doc = whole @ asked[n]
        # Dense candidate sets: top-100 documents; or documents among the top-100 chunks.
        top_docs = np.argsort(-dense_doc, kind="stable")[:100]
        chunk_top = np.argsort(-per_chunk, kind="stable")[:100]
        docs_of_chunks = np.unique(owner[chunk_top])
        dense_sets = {
            "chunkdense_top100docs": (dense_doc, top_docs),
            "chunkdense_top100chunks": (dense_doc, docs_of_chunks),
            "wholedoc_top100": (whole_doc, np.argsort(-whole_doc, kind="stable")[:100]),
        }
        for (dname, (dscore, dtop)), (lname, lscores) in itertools.product(dense_sets.items(), lexical_runs.items()):
            lex = lscores[n]
            ltop_all = np.argsort(-lex, kind="stable")[:100]
            matched = np.flatnonzero(lex > 0)
            ltop_matched = matched[np.argsort(-lex[matched], kind="stable")[:100]]
            for lcut, ltop in (("all", ltop_all), ("matched", ltop_matched)):
                for missing in ("zero", "own"):
                    dn = _scaled(dscore, dtop, own=missing == "own")
                    ln = _scaled(lex, ltop, own=missing == "own")
                    union = np.union1d(dtop, ltop)
                    for w in (0.5, 0.6):
                        fused = w * dn[union] + (1 - w) * ln[union]
                        key = f"{dname}|{lname}|{lcut}|{missing}|w{w}"
                        # Ties: stable by corpus order, and trec_eval's (score desc, doc id desc).
                        record(key + "|stable", list(union[np.argsort(-fused, kind="stable")]), n)
                        rev = sorted(range(len(union)), key=lambda i: (fused[i], ids[union[i]]), reverse=True)
                        record(key + "|iddesc", [int(union[i]) for i in rev], n)
        if n % 50 == 0:
            print(f"query {n}", flush=True)
    table = {k: round(float(np.mean(v)), 4) for k, v in results.items()}
    print(json.dumps({"benchmark": "nfcorpus_reference_variants", "ndcg@10": table}))


if __name__ == "__main__":
    main()
