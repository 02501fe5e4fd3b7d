"""The Chunker stage: token-aware windows with overlap."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from shardrag.records import Chunk, Record

#: ``text -> [(start, end), ...]`` character spans of the model's tokens (special tokens excluded).
TokenSpans = Callable[[str], Sequence[tuple[int, int]]]

_WORDS = re.compile(r"\S+")


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
        spans = list(self._spans(document.text))
        if not spans:
            return []
        chunks: list[Chunk] = []
        step = self._size - self._overlap
        start = 0
        while True:
            window = spans[start : start + self._size]
            text = document.text[window[0][0] : window[-1][1]].strip()
            chunks.append(
                Chunk(
                    chunk_id=chunk_id(document.doc_id, document.version, len(chunks)),
                    doc_id=document.doc_id,
                    text=text,
                    source=document.source,
                    title=document.title,
                    position=len(chunks),
                    version=document.version,
                    tenant=document.tenant,
                    metadata=dict(document.metadata),
                )
            )
            if start + self._size >= len(spans):
                return chunks
            start += step
