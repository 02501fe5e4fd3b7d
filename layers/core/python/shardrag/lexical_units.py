"""Lexical units: the text each chunk's BM25 side is computed over.

Dense retrieval works on chunks (the model sees 128 tokens at a time), but BM25 measured on 128-token chunks loses
to BM25 over whole passages: a document is ranked by its best chunk, which holds only part of the document's terms
(mtrag-mini 0.646 vs bm25s 0.667 nDCG@10; BENCHMARKS.md, "Retrieval defaults"). So BM25 indexes *units*: the
whole document when the document has at most ``window`` BM25 terms, otherwise a run of consecutive chunks of at
most ``window`` terms. A unit's first chunk's row stores the unit's weights, so it scores what BM25 gives the
document (the unit) as a whole; hybrid fusion gives that score to every chunk of the document the dense side
finds (``shardrag.fusion``, lexical scope "document"), and the dense side still picks the chunk.

Units never overlap, and the term statistics count each unit once (the first chunk's row counts it, the others
store a marker that counts nothing, see :meth:`shardrag.bm25.Bm25Encoder.units`), so that the IDF and the mean
length are those of the units, as bm25s computes them over documents.

Units of a long document are packed like the Chunker packs paragraphs: greedily, with *anchor* chunks (chosen by a
hash of their own text, with a chance proportional to their length) that always open a unit, so that an edit only
moves the unit boundaries near it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

from shardrag.bm25 import Tokenizer
from shardrag.chunking import Document
from shardrag.records import Chunk


class LexicalUnit(NamedTuple):
    """Consecutive chunks (indices into the document's chunk list) and the text BM25 indexes for all of them."""

    chunks: list[int]
    text: str


def _is_anchor(text: str, terms: int, window: int) -> bool:
    """Whether a chunk always opens a unit: a function of its own text and length only."""
    chance = terms / window
    if chance >= 1:
        return True
    draw = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")
    return draw / 2**64 < chance


def _spans(document: Document, chunks: Sequence[Chunk]) -> list[tuple[int, int]] | None:
    """Where each chunk's text lies in the document (the Chunker stores exact slices), or None if one is not found."""
    spans: list[tuple[int, int]] = []
    start = 0
    for chunk in chunks:
        found = document.text.find(chunk.text, start)
        if found < 0:
            return None
        spans.append((found, found + len(chunk.text)))
        start = found + 1
    return spans


def lexical_units(
    document: Document,
    chunks: Sequence[Chunk],
    *,
    window: int,
    tokenizer: Tokenizer,
    embedding_text: Callable[[Chunk], str],
) -> list[LexicalUnit]:
    """The units of ``document``'s ``chunks`` (the Chunker's output for it, in order).

    ``window`` 0: every chunk is its own unit, indexed as it is embedded (BM25 per chunk). Otherwise a document
    of at most ``window`` terms (title included) is one unit indexed as title and whole text; a longer one is cut
    into runs of consecutive chunks of at most ``window`` terms (a chunk longer than that is a unit alone).
    ``embedding_text`` puts the title in front as the model's input does (BM25 indexes what the model embeds).
    """
    if not chunks:
        return []
    if window <= 0:
        return [LexicalUnit([i], embedding_text(chunk)) for i, chunk in enumerate(chunks)]
    whole = embedding_text(chunks[0].model_copy(update={"text": document.text.strip()}))
    if len(chunks) == 1 or len(tokenizer.terms(whole)) <= window:
        return [LexicalUnit(list(range(len(chunks))), whole)]
    spans = _spans(document, chunks)
    sizes = [len(tokenizer.terms(chunk.text)) for chunk in chunks]
    groups: list[list[int]] = []
    total = 0
    for i, (chunk, size) in enumerate(zip(chunks, sizes, strict=True)):
        if groups and total + size <= window and not _is_anchor(chunk.text, size, window):
            groups[-1].append(i)
            total += size
        else:
            groups.append([i])
            total = size
    units = []
    for group in groups:
        first = chunks[group[0]]
        if len(group) == 1:
            units.append(LexicalUnit(group, embedding_text(first)))
            continue
        # The document's own text between the first chunk's start and the last one's end: overlapping chunks
        # would otherwise count the overlap's terms twice.
        body = (
            document.text[spans[group[0]][0] : spans[group[-1]][1]]
            if spans is not None
            else "\n".join(chunks[i].text for i in group)
        )
        units.append(LexicalUnit(group, embedding_text(first.model_copy(update={"text": body}))))
    return units
