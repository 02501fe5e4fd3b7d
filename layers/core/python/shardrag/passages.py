"""The passage a BM25 hit shows.

BM25 scores lexical units (:mod:`shardrag.lexical_units`: a document, or a run of its chunks) and only a unit's
first row carries the unit's weights, so a BM25 hit is that first chunk, wherever in the unit the query's terms
are. In ``bm25`` mode that chunk is what the answer cites and generation reads: for a long document, often a
passage that does not hold the terms at all. :class:`UnitPassages` swaps each shown hit for the chunk of its unit
(the rows from the hit's position on, at most ``span``) that holds the most of the query's BM25 weight, keeping
the unit's score; a tie keeps the earlier chunk."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from shardrag.bm25 import Tokenizer, term_ids
from shardrag.records import MAX_HIT_TEXT_CHARS, Chunk, Hit, Snapshot, SparseVector
from shardrag.store.base import VectorStore

log = logging.getLogger(__name__)
#: BM25's term-frequency saturation for ranking a unit's chunks (bm25s's k1; the lengths are alike).
_K1 = 1.2


class UnitPassages:
    """Moves BM25 hits onto the chunk of their unit that matches the query best."""

    def __init__(self, store_for: Callable[[int], VectorStore], tokenizer: Tokenizer, *, span: int = 32) -> None:
        """``span``: how many rows from a unit's first one are read (a unit of the default 1,024 terms spans at
        most ~20 chunks of 128 tokens; rows past it belong to the document's next unit, no harm to show)."""
        self._store_for = store_for
        self._tokenizer = tokenizer
        self._span = span

    def run(self, shard: int, hits: Sequence[Hit], query: SparseVector, snapshot: Snapshot | None = None) -> list[Hit]:
        """``hits``, each on its unit's best-matching chunk among the rows ``snapshot`` sees (the query's: a
        passage of another version must not stand in for the hit). A store that fails leaves the hits as they
        were: the passage is a courtesy, the ranking is already right."""
        weights = query.as_dict()
        spans = [(hit.doc_id, hit.position, hit.position + self._span - 1) for hit in hits]
        try:
            rows = self._store_for(shard).chunks_at(spans, snapshot=snapshot) if hits else []
        except Exception:
            log.warning("shard %d: passages not read; BM25 hits show their units' first chunks", shard, exc_info=True)
            return list(hits)
        by_doc: dict[str, list[Chunk]] = {}
        for row in sorted(rows, key=lambda r: r.position):
            by_doc.setdefault(row.doc_id, []).append(row)
        out: list[Hit] = []
        taken = {hit.chunk_id for hit in hits}
        for hit, (_, low, high) in zip(hits, spans, strict=True):
            best, best_score = None, self._score(hit.text, weights)
            for row in by_doc.get(hit.doc_id, []):
                if low <= row.position <= high and (score := self._score(row.text, weights)) > best_score:
                    best, best_score = row, score
            if best is None or best.chunk_id in taken:
                out.append(hit)  # two units of one document may reach the same chunk: it is shown once
                continue
            taken.add(best.chunk_id)
            out.append(
                hit.model_copy(
                    update={
                        "chunk_id": best.chunk_id,
                        "text": best.text[:MAX_HIT_TEXT_CHARS],
                        "position": best.position,
                        "metadata": best.metadata,
                    }
                )
            )
        return out

    def _score(self, text: str, weights: dict[int, float]) -> float:
        counts = term_ids(self._tokenizer.terms(text))
        return sum(w * counts[t] / (counts[t] + _K1) for t, w in weights.items() if counts.get(t))
