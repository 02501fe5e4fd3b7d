"""Parsers: object bytes -> :class:`~shardrag.chunking.Document` parts, streamed so memory stays bounded.

Every parser yields *parts*: lists of documents. A single-document format (text, Markdown, HTML, PDF) yields
consecutive slices of one document (the service numbers their chunks across parts); JSON Lines yields batches
of whole documents. Hostile input raises :class:`~shardrag.ingestion.errors.Rejected` with a reason code.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import IO, Any, Protocol, cast

from shardrag.chunking import Document
from shardrag.config import IngestionSettings
from shardrag.identity import MAX_LINE_ID_BYTES, line_doc_id
from shardrag.ingestion.errors import Reason, Rejected
from shardrag.ingestion.source import Blob

#: Magic numbers of binary formats that are sometimes uploaded under a text name.
_BINARY_MAGIC = (
    b"PK\x03\x04",
    b"\x1f\x8b",
    b"%PDF",
    b"\x89PNG",
    b"GIF8",
    b"\xff\xd8\xff",
    b"7z\xbc\xaf",
    b"Rar!",
    b"\x7fELF",
    b"BZh",
    b"\xfd7zXZ",
    b"\x28\xb5\x2f\xfd",
    b"MZ",
)
_SNIFF_BYTES = 8192
#: A bulk line's metadata is stored as a Milvus JSON value; bound it well below the engine's own limit so that
#: an oversized line is a rejected line, not a write the store refuses (and the queue retries) forever.
_MAX_METADATA_BYTES = 16 * 1024
_LINE_EXAMPLES = 20


@dataclass(frozen=True)
class SourceContext:
    """What a parser knows about the object besides its bytes. ``doc_id``: the object's own document
    (``shardrag.identity.object_doc_id``)."""

    doc_id: str
    uri: str
    key: str
    version: str
    tenant: str
    settings: IngestionSettings

    def line_doc_id(self, raw_id: str) -> str:
        """A bulk line's document: its identity includes this file and tenant, so a line can never replace (or,
        when its file is deleted, remove) another file's line, an object's document or another tenant's."""
        return line_doc_id(self.tenant, self.key, raw_id)

    @property
    def stem_title(self) -> str:
        name = PurePosixPath(self.key).name
        for suffix in (".gz",):
            name = name.removesuffix(suffix)
        return PurePosixPath(name).stem.replace("-", " ").replace("_", " ").strip()


@dataclass
class ParseReport:
    """Per-object findings that are not fatal (JSON Lines lines that were skipped)."""

    rejected_lines: int = 0
    examples: list[str] = field(default_factory=list)

    def reject(self, line: int, reason: str) -> None:
        self.rejected_lines += 1
        if len(self.examples) < _LINE_EXAMPLES:
            self.examples.append(f"line {line}: {reason}")


class ByteStream(Protocol):
    @property
    def size(self) -> int: ...

    def parts(self) -> Iterator[bytes]: ...


class Parser(Protocol):
    """One format. ``multi_document``: each yielded document is whole (JSON Lines) rather than a slice."""

    name: str
    multi_document: bool

    def parse(self, stream: ByteStream, ctx: SourceContext, report: ParseReport) -> Iterator[list[Document]]: ...


# -- shared helpers ------------------------------------------------------------------------------------------
def sniff_binary(head: bytes) -> None:
    """Reject bytes that are evidently not text (NULs, a binary format's magic number, mostly control bytes)."""
    if any(head.startswith(magic) for magic in _BINARY_MAGIC) or b"\x00" in head[:_SNIFF_BYTES]:
        raise Rejected(Reason.BINARY_CONTENT, "the object's bytes are a binary format, not text")
    sample = head[:_SNIFF_BYTES]
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    if sample and control / len(sample) > 0.1:
        raise Rejected(Reason.BINARY_CONTENT, "the object is mostly control bytes")


def decode_stream(parts: Iterator[bytes]) -> Iterator[str]:
    """Strict UTF-8 decoding across part boundaries (a BOM is dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    first = True
    offset = 0
    try:
        for part in parts:
            if first:
                sniff_binary(part)
            text = decoder.decode(part)
            if first and text.startswith("\ufeff"):
                text = text[1:]
            first = False
            offset += len(part)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
    except UnicodeDecodeError as exc:
        raise Rejected(Reason.INVALID_UTF8, f"not valid UTF-8 near byte {offset + exc.start}") from None


class TextSlicer:
    """Accumulates text and hands out slices of about ``target`` characters cut at paragraph breaks."""

    def __init__(self, target: int, limit: int) -> None:
        self._target = target
        self._limit = limit
        self._buffer: list[str] = []
        self._size = 0
        self.total = 0

    def feed(self, text: str) -> Iterator[str]:
        self.total += len(text)
        if self.total > self._limit:
            raise Rejected(Reason.TOO_LARGE, f"more than {self._limit} characters of text in one document")
        self._buffer.append(text)
        self._size += len(text)
        while self._size >= self._target:
            joined = "".join(self._buffer)
            cut = self._cut(joined)
            yield joined[:cut]
            rest = joined[cut:]
            self._buffer, self._size = [rest], len(rest)

    def _cut(self, text: str) -> int:
        floor = self._target // 2
        for sep in ("\n\n", "\n", " "):
            at = text.rfind(sep, floor, self._target)
            if at > 0:
                return at + len(sep)
        return self._target

    def finish(self) -> str:
        joined = "".join(self._buffer)
        self._buffer, self._size = [], 0
        return joined


def _slices_to_parts(
    texts: Iterator[str], ctx: SourceContext, *, markup: str, title_of: Any = None
) -> Iterator[list[Document]]:
    """Wrap text slices as parts of one document; the title is fixed by the first slice."""
    slicer = TextSlicer(ctx.settings.part_bytes, ctx.settings.max_document_chars)
    title: str | None = None
    produced = False

    def make(text: str) -> list[Document]:
        nonlocal title, produced
        if title is None:
            title = (title_of(text) if title_of else None) or ctx.stem_title
        # Punctuation and markup alone ("#", "---") are not text anyone can ask about.
        if not any(ch.isalnum() for ch in text):
            return []
        produced = True
        return [
            Document(
                doc_id=ctx.doc_id,
                external_id=ctx.key,
                text=text,
                source=ctx.uri,
                title=title,
                version=ctx.version,
                tenant=ctx.tenant,
                markup="markdown" if markup == "markdown" else "plain",
            )
        ]

    for text in texts:
        for piece in slicer.feed(text):
            if part := make(piece):
                yield part
    if part := make(slicer.finish()):
        yield part
    if not produced:
        raise Rejected(Reason.NO_TEXT, "the document contains no text")


def _first_heading(text: str) -> str | None:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# "):
            return stripped[2:].strip(" #") or None
    return None


# -- formats -------------------------------------------------------------------------------------------------
class PlainTextParser:
    name = "text"
    multi_document = False

    def parse(self, stream: ByteStream, ctx: SourceContext, report: ParseReport) -> Iterator[list[Document]]:
        return _slices_to_parts(decode_stream(stream.parts()), ctx, markup="plain")


class MarkdownParser:
    name = "markdown"
    multi_document = False

    def parse(self, stream: ByteStream, ctx: SourceContext, report: ParseReport) -> Iterator[list[Document]]:
        return _slices_to_parts(decode_stream(stream.parts()), ctx, markup="markdown", title_of=_first_heading)


class _HtmlText(HTMLParser):
    """HTML -> Markdown-ish text: headings become ``#`` lines (so the chunker sees sections), block elements
    become line breaks, and script/style/template content is dropped."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object", "head"})
    _BLOCK = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "ul",
            "ol",
            "tr",
            "table",
            "section",
            "article",
            "header",
            "footer",
            "nav",
            "aside",
            "blockquote",
            "pre",
            "hr",
            "dd",
            "dt",
            "dl",
            "figure",
            "figcaption",
            "main",
            "form",
            "td",
            "th",
        }
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip += 1
        elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self._BLOCK:
            self.out.append("\n")
            if tag == "pre":
                self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif (len(tag) == 2 and tag[0] == "h" and tag[1] in "123456") or tag in self._BLOCK:
            self.out.append("\n\n" if tag[0] == "h" or tag == "p" else "\n")
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self._skip:
            return
        self.out.append(data if self._pre else " ".join(data.split()) + (" " if data[-1:].isspace() else ""))

    def drain(self) -> str:
        text, self.out = "".join(self.out), []
        return text


class HtmlParser:
    name = "html"
    multi_document = False

    def parse(self, stream: ByteStream, ctx: SourceContext, report: ParseReport) -> Iterator[list[Document]]:
        html = _HtmlText()

        def texts() -> Iterator[str]:
            for chunk in decode_stream(stream.parts()):
                html.feed(chunk)
                if text := html.drain():
                    yield text
            html.close()
            if text := html.drain():
                yield text

        def title_of(text: str) -> str | None:
            return " ".join(html.title.split()) or _first_heading(text)

        return _slices_to_parts(texts(), ctx, markup="markdown", title_of=title_of)


class PdfParser:
    """Page by page through :class:`~shardrag.ingestion.source.RangeFile`: only the blocks pypdf asks for are
    downloaded, and text is handed on in parts of about ``part_bytes`` characters."""

    name = "pdf"
    multi_document = False

    def parse(self, stream: ByteStream, ctx: SourceContext, report: ParseReport) -> Iterator[list[Document]]:
        if not isinstance(stream, Blob):
            raise Rejected(Reason.UNSUPPORTED_TYPE, "compressed PDF files are not supported")
        # Per call, not on the instance: one parser object serves concurrent invocations.
        meta: dict[str, str] = {"title": ""}
        return _slices_to_parts(self._pages(stream, ctx, meta), ctx, markup="plain", title_of=lambda _: meta["title"])

    def _pages(self, blob: Blob, ctx: SourceContext, meta_out: dict[str, str]) -> Iterator[str]:
        import pypdf
        from pypdf.errors import PdfReadError

        logging.getLogger("pypdf").setLevel(logging.ERROR)
        head = blob.head_bytes(1024)
        if b"%PDF" not in head:
            raise Rejected(Reason.PDF_CORRUPT, "no PDF header")
        try:
            reader = pypdf.PdfReader(cast(IO[bytes], blob.open()), strict=False)
            if reader.is_encrypted:
                try:
                    opened = bool(reader.decrypt(""))
                except Exception:  # unsupported algorithms raise their own types
                    opened = False
                if not opened:
                    raise Rejected(Reason.PDF_ENCRYPTED, "the PDF is encrypted with a password")
            pages = len(reader.pages)
            meta = reader.metadata
            meta_out["title"] = str(meta.title or "").strip() if meta else ""
        except Rejected:
            raise
        except (
            PdfReadError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            RecursionError,
            AssertionError,
            zlib.error,
        ) as exc:
            raise Rejected(Reason.PDF_CORRUPT, f"unreadable PDF: {type(exc).__name__}") from None
        if pages > ctx.settings.max_pdf_pages:
            raise Rejected(Reason.TOO_LARGE, f"{pages} pages (limit {ctx.settings.max_pdf_pages})")
        readable = 0
        for number in range(pages):
            try:
                text = reader.pages[number].extract_text() or ""
            except Exception:
                continue
            readable += 1
            yield text + "\n\n"
        if pages and not readable:
            raise Rejected(Reason.PDF_CORRUPT, "no page could be read")


class JsonLinesParser:
    """One document per line: ``{"_id" | "id", "title"?, "text", "metadata"?}``. A bad line is skipped and
    counted; the file fails only when no line is usable."""

    name = "jsonl"
    multi_document = True

    def parse(self, stream: ByteStream, ctx: SourceContext, report: ParseReport) -> Iterator[list[Document]]:
        batch: dict[str, Document] = {}
        produced = 0
        line_no = 0
        for raw in self._lines(stream, ctx):
            line_no += 1
            if not raw.strip():
                continue
            doc = self._document(raw, line_no, ctx, report)
            if doc is None:
                continue
            batch[doc.doc_id] = doc  # a repeated id within a batch: the later line wins
            if len(batch) >= ctx.settings.jsonl_batch_documents:
                produced += len(batch)
                yield list(batch.values())
                batch = {}
        if batch:
            produced += len(batch)
            yield list(batch.values())
        if not produced:
            raise Rejected(Reason.INVALID_JSONL, f"no usable line ({report.rejected_lines} rejected)")

    @staticmethod
    def _lines(stream: ByteStream, ctx: SourceContext) -> Iterator[bytes]:
        carry = b""
        first = True
        for part in stream.parts():
            if first:
                sniff_binary(part.lstrip(b"\xef\xbb\xbf"))
                part = part.removeprefix(b"\xef\xbb\xbf")
                first = False
            data = carry + part
            lines = data.split(b"\n")
            carry = lines.pop()
            if len(carry) > ctx.settings.max_document_chars:
                raise Rejected(Reason.TOO_LARGE, "a JSON Lines line exceeds the per-document size limit")
            yield from lines
        if carry:
            yield carry

    @staticmethod
    def _document(raw: bytes, line_no: int, ctx: SourceContext, report: ParseReport) -> Document | None:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            report.reject(line_no, Reason.INVALID_UTF8.value)
            return None
        except (json.JSONDecodeError, RecursionError):
            report.reject(line_no, "invalid JSON")
            return None
        if not isinstance(obj, dict):
            report.reject(line_no, "not a JSON object")
            return None
        try:
            # A "\ud800" escape decodes to a lone surrogate, which no store can hold as UTF-8.
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            report.reject(line_no, "a string holds a lone UTF-16 surrogate")
            return None
        raw_id = obj.get("_id", obj.get("id"))
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or not str(raw_id).strip():
            report.reject(line_no, "missing _id/id")
            return None
        external_id = str(raw_id).strip()
        text, title, metadata = obj.get("text"), obj.get("title") or "", obj.get("metadata") or {}
        # Counted in bytes, as the store counts them: 512 characters of CJK text are 1,536 bytes.
        if len(external_id.encode("utf-8")) > MAX_LINE_ID_BYTES:
            report.reject(line_no, f"_id longer than {MAX_LINE_ID_BYTES} bytes")
            return None
        if not isinstance(text, str) or not (text.strip() or (isinstance(title, str) and title.strip())):
            report.reject(line_no, Reason.NO_TEXT.value)
            return None
        if not isinstance(title, str) or not isinstance(metadata, dict):
            report.reject(line_no, "title must be a string and metadata an object")
            return None
        if len(json.dumps(metadata, ensure_ascii=False).encode("utf-8")) > _MAX_METADATA_BYTES:
            report.reject(line_no, f"metadata larger than {_MAX_METADATA_BYTES} bytes")
            return None
        # The version is the content's hash, so re-uploading a bulk file re-embeds only the lines that changed.
        digest = hashlib.blake2b(
            json.dumps([title, text, metadata], sort_keys=True, ensure_ascii=False).encode(), digest_size=8
        ).hexdigest()
        body = text if text.strip() else title
        return Document(
            doc_id=ctx.line_doc_id(external_id),
            external_id=external_id,
            text=body,
            source=ctx.uri,
            title=title.strip(),
            version=digest,
            tenant=ctx.tenant,
            metadata=metadata,
        )


# -- compression ---------------------------------------------------------------------------------------------
class GunzipStream:
    """A gzip/zlib object decompressed on the fly, with absolute and ratio caps (decompression-bomb guard)."""

    def __init__(self, inner: ByteStream, settings: IngestionSettings) -> None:
        self._inner = inner
        self._limit = min(settings.max_decompressed_bytes, max(1, inner.size) * settings.max_compression_ratio)
        self._out_part = settings.part_bytes

    @property
    def size(self) -> int:
        return self._limit

    def parts(self) -> Iterator[bytes]:
        decompressor = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected
        total = 0
        try:
            for compressed in self._inner.parts():
                data = compressed
                while data:
                    out = decompressor.decompress(data, self._out_part)
                    total += len(out)
                    if total > self._limit:
                        raise Rejected(Reason.DECOMPRESSION_BOMB, f"expands beyond {self._limit} bytes")
                    if out:
                        yield out
                    data = decompressor.unconsumed_tail
                if decompressor.eof:
                    return
            rest = decompressor.flush()
            if total + len(rest) > self._limit:
                raise Rejected(Reason.DECOMPRESSION_BOMB, f"expands beyond {self._limit} bytes")
            if rest:
                yield rest
        except zlib.error as exc:
            raise Rejected(Reason.CORRUPT_ARCHIVE, f"cannot decompress: {exc}") from None


# -- choosing a parser ---------------------------------------------------------------------------------------
class ParserRegistry:
    """Chooses a parser by the key's suffix (then by content type); ``.gz`` wraps the inner format."""

    def __init__(self) -> None:
        text, markdown, html = PlainTextParser(), MarkdownParser(), HtmlParser()
        self._by_suffix: dict[str, Parser] = {
            ".txt": text,
            ".text": text,
            ".md": markdown,
            ".markdown": markdown,
            ".html": html,
            ".htm": html,
            ".pdf": PdfParser(),
            ".jsonl": JsonLinesParser(),
            ".ndjson": JsonLinesParser(),
        }
        self._by_type: dict[str, Parser] = {
            "text/plain": text,
            "text/markdown": markdown,
            "text/html": html,
            "application/pdf": self._by_suffix[".pdf"],
            "application/x-ndjson": self._by_suffix[".jsonl"],
        }

    def resolve(self, key: str, content_type: str = "") -> tuple[Parser, bool]:
        """``(parser, gzipped)``; :class:`Rejected` (``unsupported_type``) when no parser fits."""
        name = PurePosixPath(key).name.lower()
        gz = name.endswith(".gz")
        if gz:
            name = name[:-3]
        suffix = PurePosixPath(name).suffix
        parser = self._by_suffix.get(suffix)
        if parser is None and not suffix and not gz:
            parser = self._by_type.get(content_type.split(";")[0].strip().lower())
        if parser is None:
            raise Rejected(Reason.UNSUPPORTED_TYPE, f"no parser for {suffix or content_type or 'this object'}")
        return parser, gz
