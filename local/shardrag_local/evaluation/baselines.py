"""Baselines scored in the same run as the system, on the same corpus and judgments.

- :class:`ExactDenseRetriever`: brute-force cosine with the system's own embedder over *whole* documents
  (``title + " " + text``, truncated by the model at its 256 tokens). No ANN, no shards, no chunks: the
  ceiling that the ANN + sharding + chunking path is measured against.
- :class:`Bm25Retriever`: BM25 from bm25s (Lucene variant, k1 1.5, b 0.75) with English stop words and the
  Snowball English stemmer when PyStemmer is installed (recorded in :attr:`Bm25Retriever.description`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from shardrag.embedding.base import Embedder

from shardrag_local.evaluation.dataset import BeirDocument

log = logging.getLogger("shardrag.eval")


def _top_k(scores: np.ndarray[Any, np.dtype[np.float32]], ids: Sequence[str], k: int) -> list[str]:
    """The k best ids of one score row, best first; ties by id descending (trec_eval's order)."""
    k = min(k, len(ids))
    if k == 0:
        return []
    # argpartition finds the candidates in O(n); only the k of them are sorted. Widen by exact ties at the edge
    # so that the tie-break below sees every document with the k-th best score.
    candidates = np.argpartition(-scores, k - 1)[:k]
    edge = scores[candidates].min()
    candidates = np.flatnonzero(scores >= edge)
    ordered = sorted(candidates.tolist(), key=lambda i: (float(scores[i]), ids[i]), reverse=True)
    return [ids[i] for i in ordered[:k]]


class ExactDenseRetriever:
    """Exact cosine search over whole-document embeddings (unit vectors: cosine == inner product)."""

    description = "exact cosine, same ONNX model, whole documents (title + ' ' + text, 256 tokens)"

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._ids: list[str] = []
        self._matrix: np.ndarray[Any, np.dtype[np.float32]] = np.zeros((0, 0), dtype=np.float32)

    def index(self, corpus: Sequence[BeirDocument]) -> None:
        self._ids = [doc.doc_id for doc in corpus]
        self._matrix = self._embedder.embed([doc.whole_text for doc in corpus])

    def search(self, queries: Mapping[str, str], k: int) -> dict[str, list[str]]:
        query_ids = list(queries)
        vectors = self._embedder.embed([queries[q] for q in query_ids])
        scores = vectors @ self._matrix.T
        return {q: _top_k(scores[row], self._ids, k) for row, q in enumerate(query_ids)}


class Bm25Retriever:
    """BM25 over ``title + " " + text`` with bm25s."""

    def __init__(self, *, k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        self._bm25s = bm25s
        self._model = bm25s.BM25(k1=k1, b=b)
        self._ids: list[str] = []
        self._stemmer: Any = None
        try:
            # Optional: bm25s works without it, a few points lower on SciFact. Offline installs may lack it.
            import Stemmer

            self._stemmer = Stemmer.Stemmer("english")
        except ImportError:
            log.warning("PyStemmer is not installed: BM25 runs without stemming")
        stemming = "Snowball English stemmer" if self._stemmer is not None else "no stemmer"
        self.description = f"bm25s {bm25s.__version__} (lucene, k1={k1}, b={b}), English stop words, {stemming}"

    @property
    def stemmed(self) -> bool:
        return self._stemmer is not None

    def _tokenize(self, texts: list[str]) -> Any:
        return self._bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, show_progress=False)

    def index(self, corpus: Sequence[BeirDocument]) -> None:
        self._ids = [doc.doc_id for doc in corpus]
        self._model.index(self._tokenize([doc.whole_text for doc in corpus]), show_progress=False)

    @property
    def ids(self) -> list[str]:
        """Document ids in index order (the columns of :meth:`score_rows`)."""
        return list(self._ids)

    def score_rows(self, queries: Mapping[str, str]) -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
        """Each query's BM25 score of every document, in :attr:`ids` order."""
        query_ids = list(queries)
        tokens = self._bm25s.tokenize(
            [queries[q] for q in query_ids],
            stopwords="en",
            stemmer=self._stemmer,
            return_ids=False,
            show_progress=False,
        )
        return {
            q: np.asarray(self._model.get_scores(query_tokens), dtype=np.float32)
            for q, query_tokens in zip(query_ids, tokens, strict=True)
        }

    def search(self, queries: Mapping[str, str], k: int) -> dict[str, list[str]]:
        # Each query is scored as a full row so that ties are broken the same way as for the dense baseline.
        return {q: _top_k(scores, self._ids, k) for q, scores in self.score_rows(queries).items()}
