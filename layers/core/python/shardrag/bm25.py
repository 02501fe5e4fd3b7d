"""BM25 as sparse vectors: the lexical half of hybrid retrieval, computed by the project, stored in Milvus.

Why not Milvus's built-in BM25 function: Milvus Lite rejects its English analyzer, the custom analyzer that works
measures below bm25s on SciFact (nDCG@10 0.665 vs 0.686: the dataset's reference figures), and its per-shard
statistics make scores from different shards incomparable. Here BM25 is split the way an inner-product index
can evaluate it exactly:

* the document side stores the term-frequency part, ``tf·(k1+1) / (tf + k1·(1 - b + b·len/avgdl))``, of a
  *lexical unit* (:mod:`shardrag.lexical_units`: a whole document when that has at most ``window`` terms, else a
  run of its consecutive chunks) on the unit's first chunk's row, so that the row scores what BM25 gives the
  document (fusion carries that score to the document's other chunks: ``shardrag.fusion``);
* the query side carries the IDF of each query term, from corpus-wide document frequencies over units (summed
  over shards, kept current by ingestion, see :mod:`shardrag.term_stats`);

so ``query · document`` is the BM25 score, identical on every shard.

``avgdl`` is measured, not assumed: the term statistics keep the total length of the units beside their count
(exact under the same deltas as the document frequencies), and a write encodes a document's units with the mean
length of the corpus as it will be once the document lands (what is stored plus the document itself; a large
document read in parts shares the mean fixed at its first part, without its own earlier version), rounded to a
grid 2 % apart (:func:`grid_mean`: an overwrite keeps the rows it would write identically, which needs the same
mean). A unit's stored weights therefore use the mean of its time; on a corpus loaded in batches the mean
settles after the first batch, and the study (``bench/retrieval_study.py``) measures what that costs against the
final mean. Only a unit's first row stores its weights and counts it: it carries the unit's length on the
reserved id 0 that no query carries (so it never scores); the unit's other rows store :data:`SHARED_ROW`, that
id alone with a value that is never a length, so that each stored row says exactly what it counts, removing it
uncounts exactly that, and an edit in a unit rewrites its first row and the edited chunks', not every row of
the unit (``shardrag.row_identity``). Weights on every row of a unit would also let a long document's tied rows
crowd the lexical candidates (the top ``depth`` would hold a few documents, not ``depth``). Token ids are a
stable hash of the stemmed token: no shared vocabulary to keep in sync, and Milvus's sparse index takes 32-bit
ids.

Tokenisation follows bm25s (the baseline we measure against): lowercase, ``\\w\\w+`` tokens, its English stop
words, Snowball English stemming (PyStemmer).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

import Stemmer
from shardrag.records import SparseVector

#: bm25s's English stop words (``bm25s.stopwords.STOPWORDS_EN``), so that BM25 mode matches that baseline.
STOPWORDS_EN: Final = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    ]
)
_TOKEN: Final = re.compile(r"(?u)\b\w\w+\b")
#: Ids 1..2^32-2: Milvus sparse indices are uint32 below 2^32-1, and 0 is kept for :data:`EMPTY_MARKER`.
_ID_SPACE: Final = 2**32 - 2
#: Reserved id of a unit's length (its number of BM25 terms): no term hashes to it and no query carries it.
LENGTH_ID: Final = 0
#: Milvus refuses an all-zero sparse row; a chunk with no terms (digits only, stop words only) stores this
#: marker on id 0, which no query ever carries, so it never scores (its length reads as 0).
EMPTY_MARKER: Final = SparseVector(indices=[LENGTH_ID], values=[1e-6])
#: The value on :data:`LENGTH_ID` of a row whose lexical unit another row (the unit's first) carries and counts
#: (:mod:`shardrag.lexical_units`): never a length (lengths are whole numbers, or the empty marker's ~0), so such a
#: row counts for nothing in the statistics, and removing it uncounts nothing.
SHARED_UNIT: Final = 0.5
#: What a unit's rows but the first store: no term (they never score), the marker that they count nothing.
SHARED_ROW: Final = SparseVector(indices=[LENGTH_ID], values=[SHARED_UNIT])


class Tokenizer:
    """Text to stemmed terms (bm25s-compatible)."""

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self._stem = lru_cache(maxsize=200_000)(self._stemmer.stemWord)

    def terms(self, text: str) -> list[str]:
        return [self._stem(token) for token in _TOKEN.findall(text.lower()) if token not in STOPWORDS_EN]


@lru_cache(maxsize=500_000)
def term_id(term: str) -> int:
    """Stable 32-bit id of a stemmed term (same in every process, shard and release)."""
    digest = hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "big") % _ID_SPACE


def term_ids(terms: Iterable[str]) -> Counter[int]:
    """Term id → occurrences."""
    return Counter(term_id(t) for t in terms)


def saturation(tf: Any, length: Any, *, k1: float, b: float, avgdl: float) -> Any:
    """The document side of BM25, ``tf·(k1+1) / (tf + k1·(1 - b + b·length/avgdl))``. Plain arithmetic, so
    that it takes numbers or numpy arrays alike: the offline study (``bench/retrieval_study.py``) scores with
    this very function."""
    return tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avgdl))


def stored_length(vector: SparseVector) -> int | None:
    """The length a stored chunk was counted with, or None for a row written before lengths were stored (and for
    a row that shares a unit counted by another row: :func:`counts_unit`)."""
    if vector.indices and vector.indices[0] == LENGTH_ID and counts_unit(vector):
        return round(vector.values[0])
    return None


def counts_unit(vector: SparseVector) -> bool:
    """Whether a stored row counts in the term statistics: every row but one marked :data:`SHARED_UNIT`."""
    return not (vector.indices and vector.indices[0] == LENGTH_ID and abs(vector.values[0] - SHARED_UNIT) < 1e-3)


class Bm25Encoder:
    """Builds the document and query sides of BM25 (``k1``, ``b`` as in Lucene/bm25s).

    ``avgdl`` None (the default): each write uses the measured mean unit length (:meth:`documents`); a number
    pins it (every unit weighted against the same constant, whatever the corpus). ``window``: the most BM25 terms
    of a lexical unit (:mod:`shardrag.lexical_units`; 0: every chunk is its own unit)."""

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        avgdl: float | None = None,
        window: int = 0,
        tokenizer: Tokenizer | None = None,
    ):
        if k1 < 0 or not 0 <= b <= 1 or (avgdl is not None and avgdl <= 0) or window < 0:
            raise ValueError("BM25 needs k1 >= 0, 0 <= b <= 1, avgdl > 0 and window >= 0")
        self.k1 = k1
        self.b = b
        self.avgdl = avgdl
        self.window = window
        self.tokenizer = tokenizer or Tokenizer()

    def document(self, text: str) -> SparseVector:
        """The stored side of one unit (with a measured ``avgdl``: as if it were the whole corpus)."""
        return self.documents([text])[0]

    def documents(
        self, texts: Sequence[str], corpus: CorpusStats | None = None, *, mean: float | None = None
    ) -> list[SparseVector]:
        """The stored side of a batch of units: the saturated term frequency of each term, and the unit's length
        on :data:`LENGTH_ID`. ``corpus``: the statistics the batch is added to (their measured lengths and the
        batch's own give ``avgdl``, on :func:`grid_mean`'s grid, unless it is pinned). ``mean``: the measured
        mean to use instead (a large document's parts all use the mean fixed at its first part)."""
        counted = [term_ids(self.tokenizer.terms(text)) for text in texts]
        lengths = [sum(counts.values()) for counts in counted]
        avgdl = self.avgdl or mean or grid_mean(measured_avgdl(corpus, lengths))
        return [self._encode(counts, length, avgdl) for counts, length in zip(counted, lengths, strict=True)]

    def units(
        self,
        texts: Sequence[str],
        sizes: Sequence[int],
        corpus: CorpusStats | None = None,
        *,
        mean: float | None = None,
    ) -> list[SparseVector]:
        """The stored side of chunks grouped in lexical units: unit ``u`` (text ``texts[u]``) covers the next
        ``sizes[u]`` chunks; the first stores the unit's weights and counts it in the statistics (its length on
        :data:`LENGTH_ID`), the others store :data:`SHARED_ROW`. ``avgdl`` as in :meth:`documents`, over units."""
        out: list[SparseVector] = []
        for vector, size in zip(self.documents(texts, corpus, mean=mean), sizes, strict=True):
            if size > 0:
                out.append(vector)
                out.extend([SHARED_ROW] * (size - 1))
        return out

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Each text's BM25 length (its number of terms), as :meth:`documents` counts it."""
        return [len(self.tokenizer.terms(text)) for text in texts]

    def _encode(self, counts: Counter[int], length: int, avgdl: float) -> SparseVector:
        if not counts:
            return EMPTY_MARKER
        ids = sorted(counts)
        weights = [saturation(counts[i], length, k1=self.k1, b=self.b, avgdl=avgdl) for i in ids]
        return SparseVector(indices=[LENGTH_ID, *ids], values=[float(length), *weights])

    def query_terms(self, text: str) -> list[int]:
        """The distinct term ids of a query."""
        return sorted(term_ids(self.tokenizer.terms(text)))

    def query(self, text: str, stats: CorpusStats) -> SparseVector:
        """The query side: each distinct query term weighted by its IDF; empty when no term is known."""
        weights: dict[int, float] = {}
        for tid in term_ids(self.tokenizer.terms(text)):
            df = stats.df.get(tid, 0)
            if df > 0:
                weights[tid] = idf(stats.documents, df)
        ids = sorted(weights)
        return SparseVector(indices=ids, values=[weights[i] for i in ids])


def measured_avgdl(corpus: CorpusStats | None, lengths: Sequence[int]) -> float:
    """Mean unit length of ``corpus`` with ``lengths`` added (1.0 when nothing has a length: then every unit
    is empty and the value is never used)."""
    tokens = sum(lengths) + (corpus.tokens if corpus is not None else 0)
    measured = len(lengths) + (corpus.measured if corpus is not None else 0)
    return tokens / measured if tokens > 0 and measured > 0 else 1.0


#: Ratio between neighbouring values of the measured mean a chunk may be weighted with.
MEAN_GRID_RATIO: Final = 1.02


def grid_mean(mean: float) -> float:
    """``mean`` on a geometric grid 2 % apart, so at most 1 % off (the retrieval study moved the mean by 30 % for
    changes of 0.001 to 0.004 in the worst case: BENCHMARKS.md, "avgdl").

    Why a grid: a stored row is kept by an overwrite only if it would be written identically
    (``shardrag.row_identity``), and its weights depend on the mean; an exact mean moves with every write in the
    corpus, so no row would ever be equal again. On the grid it moves only when the corpus's mean length does.
    """
    if mean <= 0:
        return 1.0
    return float(MEAN_GRID_RATIO ** round(math.log(mean, MEAN_GRID_RATIO)))


def idf(documents: int, df: int) -> float:
    """Lucene's BM25 IDF: never negative, so a very common term only adds little."""
    return math.log(1 + (documents - df + 0.5) / (df + 0.5))


class CorpusStats:
    """Document frequencies over lexical units (BM25's "documents"), how many units there are, and their total
    length.

    Kept per shard and summed over shards for the IDF and ``avgdl``. The same type holds a change to apply (a
    delta, whose counts may be negative); applied counts never go below zero, so a replayed delete cannot corrupt
    the table. ``measured`` counts the units whose length is known (every unit but rows stored before lengths
    were), so that ``tokens / measured`` is the exact mean even beside such rows.
    """

    def __init__(
        self, documents: int = 0, df: Mapping[int, int] | None = None, *, tokens: int = 0, measured: int = 0
    ) -> None:
        self.documents = documents
        self.df: dict[int, int] = dict(df or {})
        self.tokens = tokens
        self.measured = measured

    @property
    def avgdl(self) -> float | None:
        """The mean length of the units (None when no unit with a known length is counted)."""
        return self.tokens / self.measured if self.measured > 0 and self.tokens > 0 else None

    def count(self, vectors: Iterable[SparseVector], sign: int) -> None:
        """Count each vector as one unit holding its terms (``sign`` -1 uncounts it); a row that shares a unit
        counted by another row counts for nothing."""
        for vector in vectors:
            if not counts_unit(vector):
                continue
            self.documents += sign
            length = stored_length(vector)
            if length is not None:
                self.tokens += sign * length
                self.measured += sign
            if vector.is_empty_marker:
                continue
            for tid in vector.indices:
                if tid != LENGTH_ID:
                    self.df[tid] = self.df.get(tid, 0) + sign

    def add(self, other: CorpusStats, *, clamp: bool = True) -> None:
        """Add ``other`` (another shard's stats or a delta); with ``clamp``, counts stop at zero."""
        self.documents += other.documents
        self.tokens += other.tokens
        self.measured += other.measured
        for tid, count in other.df.items():
            total = self.df.get(tid, 0) + count
            if total > 0 or (not clamp and total != 0):
                self.df[tid] = total
            else:
                self.df.pop(tid, None)
        if clamp:
            self.documents = max(0, self.documents)
            self.tokens = max(0, self.tokens)
            self.measured = max(0, self.measured)

    def readable(self) -> CorpusStats:
        """What the IDF may use: terms with a positive count, and at least as many documents as any term has.
        A stored table may hold a negative count for a moment (deltas land in any order); the IDF of such a term
        is undefined, and a document count below a term's count would make it negative. Likewise a negative
        length total reads as none measured."""
        df = {tid: count for tid, count in self.df.items() if count > 0}
        lengths_ok = self.tokens >= 0 and self.measured > 0
        return CorpusStats(
            max(self.documents, max(df.values(), default=0), 0),
            df,
            tokens=self.tokens if lengths_ok else 0,
            measured=self.measured if lengths_ok else 0,
        )

    def __bool__(self) -> bool:
        return bool(self.documents or self.df or self.tokens or self.measured)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CorpusStats) and (self.documents, self.df, self.tokens, self.measured) == (
            other.documents,
            other.df,
            other.tokens,
            other.measured,
        )

    def __repr__(self) -> str:
        return (
            f"CorpusStats(documents={self.documents}, terms={len(self.df)}, tokens={self.tokens}, "
            f"measured={self.measured})"
        )
