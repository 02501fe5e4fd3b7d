"""The Chunker stage: token-aware windows with overlap, structure-aware for Markdown (and HTML, which the
ingestion parser turns into Markdown headings), cut at paragraph breaks so that an edit changes only the chunks
around it (``Chunker`` explains how)."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from shardrag.records import Chunk, Record

#: ``text -> [(start, end), ...]`` character spans of the model's tokens (special tokens excluded).
TokenSpans = Callable[[str], Sequence[tuple[int, int]]]

_WORDS = re.compile(r"\S+")
#: An ATX heading line (``# Title`` … ``###### Title``): a section starts there.
_MD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.MULTILINE)
#: A blank line: a paragraph starts after it.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Fallback token spans (whitespace words) for callers without the model's tokenizer."""
    return [m.span() for m in _WORDS.finditer(text)]


class Document(Record):
    """A parsed document ready to be chunked."""

    doc_id: str
    text: str
    source: str = ""
    title: str = ""
    version: str = ""
    tenant: str = "default"
    metadata: dict[str, Any] = {}
    #: ``markdown``: ATX headings also start a unit (a paragraph) where no blank line precedes them.
    markup: Literal["plain", "markdown"] = "plain"
    #: Index of this text's first chunk: a large document indexed in parts numbers its chunks across parts.
    first_chunk: int = 0
    #: The id users know the document by (object key, bulk line ``_id``); ``doc_id`` is the internal identity.
    external_id: str = ""


def chunk_id(doc_id: str, version: str, index: int) -> str:
    """A chunk's place in one version of its document: the id offline tools key chunks by. What the index
    stores a chunk under is its row's id, which the indexer gives it (``shardrag.row_identity``)."""
    return f"{doc_id}::{version or 'v0'}::{index:05d}"


class Chunker:
    """Cuts a document into windows of at most ``size`` model tokens that overlap by ``overlap`` tokens.

    Windows are cut at token boundaries, using the embedding model's own tokenizer when given, so no chunk is
    silently truncated by the model. The stored text is the document's own; :meth:`embedding_text` prefixes
    the title to what is embedded when ``title_prefix`` is on (measured to help retrieval on SciFact).

    Windows follow the text's units (paragraphs; in Markdown also headings): small neighbouring units are packed
    into one window, a unit longer than the window is cut with overlap inside it. One window sliding over the whole
    text would move every later boundary when one paragraph changes length, so an edit would change (and cost the
    embedding of) every chunk after it. Greedy packing alone has the same flaw in a milder form (uniform short
    paragraphs re-pair all the way down), so some units are *anchors* that always open a window, chosen by a hash
    of their own text with a probability proportional to their length (about one per ``2 * size`` tokens):
    whether a unit is an anchor never depends on anything else, and an edit changes only the windows between
    the anchors around it.
    """

    #: Changes whenever the same text and settings would be cut differently (a resumed write must not mix cuts).
    VERSION = "units-1"

    def __init__(
        self,
        *,
        size: int = 200,
        overlap: int = 40,
        token_spans: TokenSpans = word_spans,
        title_prefix: bool = True,
    ) -> None:
        if size < 8:
            raise ValueError("chunk size must be at least 8 tokens")
        if not 0 <= overlap < size:
            raise ValueError("overlap must be in [0, size)")
        self._size = size
        self._overlap = overlap
        self._spans = token_spans
        self._title_prefix = title_prefix

    def embedding_text(self, chunk: Chunk) -> str:
        """What the model embeds for ``chunk``: its title (unless the text already starts with it), then the text."""
        if self._title_prefix and chunk.title and not chunk.text.lstrip("# ").startswith(chunk.title):
            return f"{chunk.title}\n{chunk.text}"
        return chunk.text

    def run(self, document: Document) -> list[Chunk]:
        """The chunks of ``document``, numbered from ``document.first_chunk``."""
        spans = list(self._spans(document.text))
        if not spans:
            return []
        chunks: list[Chunk] = []
        for first, last in self._windows(document.text, spans, self._units(document, spans)):
            text = document.text[spans[first][0] : spans[last][1]].strip()
            if not text:
                continue
            index = document.first_chunk + len(chunks)
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(document.doc_id, document.version, index),
                    doc_id=document.doc_id,
                    text=text,
                    source=document.source,
                    title=document.title,
                    position=index,
                    version=document.version,
                    tenant=document.tenant,
                    metadata=dict(document.metadata),
                    external_id=document.external_id,
                )
            )
        return chunks

    @staticmethod
    def _units(document: Document, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Token ranges ``[start, end)`` of the document's units: paragraphs, and in Markdown headings too."""
        starts = [m.end() for m in _PARAGRAPH_BREAK.finditer(document.text)]
        if document.markup == "markdown":
            starts.extend(m.start() for m in _MD_HEADING.finditer(document.text))
        bounds = [0]
        token = 0
        for char in sorted(starts):
            while token < len(spans) and spans[token][0] < char:
                token += 1
            if bounds[-1] < token < len(spans):
                bounds.append(token)
        bounds.append(len(spans))
        return list(itertools.pairwise(bounds))

    def _is_anchor(self, text: str, spans: Sequence[tuple[int, int]], start: int, end: int) -> bool:
        """Whether the unit ``[start, end)`` always opens a window: a function of its own text and length only."""
        chance = (end - start) / (2 * self._size)
        if chance >= 1:
            return True
        body = text[spans[start][0] : spans[end - 1][1]].encode("utf-8", "surrogatepass")
        draw = int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "big") / 2**64
        return draw < chance

    def _windows(
        self, text: str, spans: Sequence[tuple[int, int]], units: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Inclusive token ranges of the windows: small neighbouring units are packed into one window (a heading
        alone is a poor chunk) until an anchor or the window size closes it; a unit longer than the window is cut
        with overlap inside it."""
        windows: list[tuple[int, int]] = []
        step = self._size - self._overlap
        packed: tuple[int, int] | None = None
        for start, end in units:
            if packed is not None and end - packed[0] <= self._size and not self._is_anchor(text, spans, start, end):
                packed = (packed[0], end)
                continue
            if packed is not None:
                windows.append((packed[0], packed[1] - 1))
                packed = None
            if end - start <= self._size:
                packed = (start, end)
                continue
            cursor = start
            while True:
                if cursor + self._size >= end:
                    # The unit's tail opens the next packed window so that it can absorb a short follower.
                    packed = (cursor, end)
                    break
                windows.append((cursor, cursor + self._size - 1))
                cursor += step
        if packed is not None:
            windows.append((packed[0], packed[1] - 1))
        return windows
