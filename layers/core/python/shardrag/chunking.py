"""The Chunker stage: token-aware windows with overlap, structure-aware for Markdown (and HTML, which the
ingestion parser turns into Markdown headings)."""

from __future__ import annotations

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
    #: ``markdown``: sections start at ATX headings and a window never spans two sections.
    markup: Literal["plain", "markdown"] = "plain"
    #: Index of this text's first chunk: a large document indexed in parts numbers its chunks across parts.
    first_chunk: int = 0
    #: The id users know the document by (object key, bulk line ``_id``); ``doc_id`` is the internal identity.
    external_id: str = ""


def chunk_id(doc_id: str, version: str, index: int) -> str:
    """Deterministic, so a redelivered event upserts the same rows instead of adding new ones."""
    return f"{doc_id}::{version or 'v0'}::{index:05d}"


class Chunker:
    """Cuts a document into windows of at most ``size`` model tokens that overlap by ``overlap`` tokens.

    Windows are cut at token boundaries, using the embedding model's own tokenizer when given, so no chunk is
    silently truncated by the model. The stored text is the document's own; :meth:`embedding_text` prefixes
    the title to what is embedded when ``title_prefix`` is on (measured to help retrieval on SciFact).
    """

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
        for first, last in self._windows(spans, self._sections(document, spans)):
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
    def _sections(document: Document, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Token ranges ``[start, end)`` of the document's sections (one section for plain text)."""
        if document.markup != "markdown":
            return [(0, len(spans))]
        starts = [m.start() for m in _MD_HEADING.finditer(document.text)]
        bounds = [0]
        token = 0
        for char in starts:
            while token < len(spans) and spans[token][0] < char:
                token += 1
            if bounds[-1] < token < len(spans):
                bounds.append(token)
        bounds.append(len(spans))
        return list(itertools.pairwise(bounds))

    def _windows(self, spans: Sequence[tuple[int, int]], sections: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Inclusive token ranges of the windows: small neighbouring sections are packed into one window (a
        heading alone is a poor chunk); a section longer than the window is cut with overlap inside it."""
        windows: list[tuple[int, int]] = []
        step = self._size - self._overlap
        packed: tuple[int, int] | None = None
        for start, end in sections:
            if packed is not None and end - packed[0] <= self._size:
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
                    # The section's tail opens the next packed window so that it can absorb a short follower.
                    packed = (cursor, end)
                    break
                windows.append((cursor, cursor + self._size - 1))
                cursor += step
        if packed is not None:
            windows.append((packed[0], packed[1] - 1))
        return windows
