"""The NFCorpus dev reference fusion, recomputed the way the dataset's README describes it (issue 14).

The README gives 0.341 for "convex fusion of min-max-normalised chunk-dense and bm25s top-100, weights 0.5 / 0.5"
and 0.339 for weights 0.6 / 0.4, with MiniLM over 128-token chunks (32 overlap, title prefixed) and bm25s 0.3.16
(k1 1.5, b 0.75, English stop words, Snowball stemmer). This script cuts plain sliding windows of the model's own
tokens (not ShardRAG's chunker), embeds them with the shipped ONNX model, ranks a document at its best chunk, and
fuses with bm25s at several weights and three ways of normalising, so that the README's figures can be checked
against one computation. Embeddings are cached in ``build/nfcorpus-reference.npz``. Prints one JSON line.

Usage::

    python -m bench.nfcorpus_reference
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "nfcorpus-dev"
CACHE = ROOT / "build" / "nfcorpus-reference.npz"
WINDOW, STRIDE, DEPTH = 128, 96, 100


def _ndcg10(ranked: list[str], judged: dict[str, int]) -> float:
    """nDCG@10 with linear gain, as BEIR (pytrec_eval) computes it."""
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(judged.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def _dense(corpus: list[dict[str, Any]], queries: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk vectors, each chunk's document index, and query vectors (cached)."""
    if CACHE.is_file():
        cached = np.load(CACHE)
        return cached["vectors"], cached["owner"], cached["queries"]
    from shardrag.embedding.onnx import OnnxEmbedder

    model = OnnxEmbedder(ROOT / "build" / "model", batch_size=32)
    texts: list[str] = []
    owner: list[int] = []
    for index, doc in enumerate(corpus):
        title, text = doc["title"].strip(), doc["text"]
        spans = model.token_spans(text)
        for start in range(0, max(len(spans), 1), STRIDE):
            window = spans[start : start + WINDOW]
            if window:
                piece = text[window[0][0] : window[-1][1]]
                texts.append(f"{title}\n{piece}" if title else piece)
                owner.append(index)
            if start + WINDOW >= len(spans):
                break
    vectors = np.concatenate([model.embed(texts[k : k + 1024]) for k in range(0, len(texts), 1024)])
    asked = np.stack([model.embed([q])[0] for q in queries])
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, vectors=vectors, owner=np.array(owner), queries=asked)
    return vectors, np.array(owner), asked


def _normalised(scores: np.ndarray, top: np.ndarray) -> dict[int, float]:
    values = scores[top]
    low, span = float(values.min()), float(values.max() - values.min())
    return {int(i): (float(scores[i]) - low) / span if span > 0 else 1.0 for i in top}


def load() -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict[str, int]], list[str], list[str]]:
    """The dev split: corpus, questions, judgments, the judged query ids and the document ids."""
    corpus = [json.loads(line) for line in (DATA / "corpus.jsonl").open()]
    questions = {row["_id"]: row["text"] for row in map(json.loads, (DATA / "queries.jsonl").open())}
    judged: dict[str, dict[str, int]] = {}
    for line in list((DATA / "qrels" / "dev.tsv").open())[1:]:
        query, doc, grade = line.rstrip("\n").split("\t")
        judged.setdefault(query, {})[doc] = int(grade)
    return corpus, questions, judged, [q for q in questions if q in judged], [doc["_id"] for doc in corpus]


def main() -> None:
    import bm25s
    import Stemmer

    corpus, questions, judged, query_ids, ids = load()
    vectors, owner, asked = _dense(corpus, [questions[q] for q in query_ids])

    stemmer = Stemmer.Stemmer("english")
    bm25 = bm25s.BM25(k1=1.5, b=0.75)
    bm25.index(
        bm25s.tokenize(
            [f"{d['title']} {d['text']}" for d in corpus], stopwords="en", stemmer=stemmer, show_progress=False
        ),
        show_progress=False,
    )
    weights = (0.4, 0.5, 0.6, 0.7)
    scores: dict[str, list[float]] = {}

    def record(name: str, ranked: list[str], query: str) -> None:
        scores.setdefault(name, []).append(_ndcg10(ranked, judged[query]))

    for n, query in enumerate(query_ids):
        dense = np.full(len(ids), -np.inf)
        np.maximum.at(dense, owner, vectors @ asked[n])
        docs, values = bm25.retrieve(
            bm25s.tokenize([questions[query]], stopwords="en", stemmer=stemmer, show_progress=False),
            k=len(ids),
            show_progress=False,
        )
        lexical = np.zeros(len(ids))
        lexical[docs[0]] = values[0]
        record("chunk_dense", [ids[i] for i in np.argsort(-dense, kind="stable")[:10]], query)
        record("bm25s", [ids[i] for i in np.argsort(-lexical, kind="stable")[:10]], query)
        dense_side = _normalised(dense, np.argsort(-dense, kind="stable")[:DEPTH])
        matched = np.flatnonzero(lexical > 0)
        ways: dict[str, dict[int, float]] = {
            # bm25s's top 100 (documents with no query term fill it when fewer match), missing: 0.
            "top100": _normalised(lexical, np.argsort(-lexical, kind="stable")[:DEPTH]),
            # only documents that match a query term.
            "top100_matched": _normalised(lexical, matched[np.argsort(-lexical[matched], kind="stable")[:DEPTH]])
            if len(matched)
            else {},
        }
        for way, lexical_side in ways.items():
            union = set(dense_side) | set(lexical_side)
            for weight in weights:
                fused = {i: weight * dense_side.get(i, 0.0) + (1 - weight) * lexical_side.get(i, 0.0) for i in union}
                ranked = sorted(union, key=lambda i, f=fused: -f[i])
                record(f"{way}_dense{weight:.1f}", [ids[i] for i in ranked], query)
    print(
        json.dumps(
            {
                "benchmark": "nfcorpus_reference",
                "queries": len(query_ids),
                "chunks": len(owner),
                "ndcg@10": {name: round(float(np.mean(v)), 4) for name, v in scores.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
