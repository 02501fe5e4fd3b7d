"""Parsers and hostile input: every format's happy path, and a generated corpus of malformed files that must
each end in a ``failed`` registry record with a reason code — never an exception out of the service."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pypdf
import pytest
from moto import mock_aws
from shardrag.chunking import Chunker, Document, word_spans
from shardrag.config import IngestionSettings
from shardrag.indexing import DocumentIndexer
from shardrag.ingestion import (
    DynamoDbRegistry,
    IngestService,
    ObjectEvent,
    Reason,
    S3ObjectSource,
    normalise_sequencer,
    parse_notification,
    table_definition,
)
from shardrag.store.memory import InMemoryVectorStore


def make_pdf(pages: list[str], title: str = "") -> bytes:
    """A small valid PDF with one Helvetica text line per page (offsets computed, so strict readers accept it)."""
    objects: list[bytes] = []
    n = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    font = 3 + 2 * n
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info = len(objects) + 1
    objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {info} 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypted_pdf() -> bytes:
    reader = pypdf.PdfReader(io.BytesIO(make_pdf(["secret text"])))
    writer = pypdf.PdfWriter()
    for page in reader.pages:
        writer.add_page(page)
    writer.encrypt(user_password="hunter2", owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def blank_pdf() -> bytes:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(200, 200)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def zip_bytes(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


SETTINGS = IngestionSettings(
    chunk_size=16,
    chunk_overlap=4,
    part_bytes=4096,
    max_file_bytes=300_000,
    max_document_chars=250_000,
    max_compression_ratio=5,
)


def hostile_corpus() -> dict[str, tuple[bytes, str]]:
    """Key -> (bytes, expected reason). Generated here so that nothing binary lives in the repository."""
    pdf = make_pdf(["alpha page", "beta page"])
    deep = "[" * 100_000 + "]" * 100_000
    return {
        "empty.txt": (b"", "empty"),
        "whitespace.txt": (b"   \n\n\t  \n", "no_text"),
        "png-named.txt": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "binary_content"),
        "nul.txt": (b"hello\x00world" * 50, "binary_content"),
        "control.txt": (bytes([1, 2, 3, 4, 5, 6, 7]) * 200, "binary_content"),
        "utf16.txt": ("some text in utf-16".encode("utf-16"), "binary_content"),
        "zip-named.txt": (zip_bytes("a.txt", b"x" * 1000), "binary_content"),
        "latin1.txt": ("café crème brûlée ".encode("latin-1") * 20, "invalid_utf8"),
        "truncated-utf8.md": (b"# Title\n\nok text \xe2\x82", "invalid_utf8"),
        "bad-utf8-late.txt": (b"a" * 10_000 + b"\xff\xfe" + b"b" * 100, "invalid_utf8"),
        "script-only.html": (
            b"<html><head><script>alert(1)</script><style>p{}</style></head><body></body></html>",
            "no_text",
        ),
        "tags-only.html": (b"<div><br/><span> </span><img src=x></div>", "no_text"),
        "bad-utf8.html": (b"<p>caf\xe9</p>", "invalid_utf8"),
        "headings-empty.md": (b"#\n\n##\n", "no_text"),
        "bom-only.md": (b"\xef\xbb\xbf", "no_text"),
        "garbage.pdf": (b"%PDF-1.4\n" + b"\x00garbage\xff" * 200, "pdf_corrupt"),
        "not-a-pdf.pdf": (b"just some text pretending", "pdf_corrupt"),
        "truncated.pdf": (pdf[: len(pdf) // 3], "pdf_corrupt"),
        "encrypted.pdf": (encrypted_pdf(), "pdf_encrypted"),
        "blank.pdf": (blank_pdf(), "no_text"),
        "bomb.txt.gz": (gzip.compress(b"a" * 30_000_000, compresslevel=9), "decompression_bomb"),
        "corrupt.txt.gz": (b"\x1f\x8b\x08\x00" + b"not really gzip" * 10, "corrupt_archive"),
        "bomb.zip": (zip_bytes("big.txt", b"\0" * 5_000_000), "unsupported_type"),
        "program.exe": (b"MZ\x90\x00" + b"\0" * 100, "unsupported_type"),
        "no-extension": (b"some bytes", "unsupported_type"),
        "huge.txt": (b"word " * 70_000, "too_large"),
        "all-bad.jsonl": (b'{"text": "no id"}\n[1, 2]\nnot json\n{"_id": "x", "text": 5}\n', "invalid_jsonl"),
        "deep.jsonl": (deep.encode()[:250_000] + b"\n", "invalid_jsonl"),
        "binary.jsonl": (b"\x00\x01\x02" * 100, "binary_content"),
        "long-line.jsonl": (b'{"_id": "a", "text": "' + b"x" * 290_000 + b'"}\n', "too_large"),
        "gzip-pdf.pdf.gz": (gzip.compress(pdf), "unsupported_type"),
    }


class Env:
    def __init__(self, embedder: Any) -> None:
        self.s3 = boto3.client("s3", region_name="us-east-1")
        self.s3.create_bucket(Bucket="bkt")
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**table_definition("r"))
        self.store = InMemoryVectorStore(dimension=embedder.dimension)
        self.registry = DynamoDbRegistry(ddb, "r")
        indexer = DocumentIndexer(
            chunker=Chunker(size=16, overlap=4, token_spans=word_spans),
            embedder=embedder,
            store_for=lambda _: self.store,
            shard_count=1,
        )
        self.service = IngestService(
            SETTINGS,
            indexer=indexer,
            stores=lambda _: self.store,
            shard_count=1,
            registry=self.registry,
            objects=S3ObjectSource(self.s3),
        )
        self.n = 0

    def ingest(self, key: str, body: bytes, **extra: Any) -> Any:
        etag = self.s3.put_object(Bucket="bkt", Key=key, Body=body, **extra)["ETag"].strip('"')
        self.n += 1
        event = ObjectEvent(
            kind="created",
            bucket="bkt",
            key=key,
            etag=etag,
            size=len(body),
            sequencer=normalise_sequencer(f"{self.n:x}"),
        )
        return self.service.run(event, owner=f"o{self.n}")

    def chunks(self, doc_id: str | None = None) -> list[Any]:
        rows = sorted((c for c, _ in self.store._rows.values()), key=lambda c: (c.external_id, c.position))
        return [c for c in rows if doc_id is None or c.external_id == doc_id]


@pytest.fixture
def env(hashing_embedder: Any) -> Iterator[Env]:
    with mock_aws():
        yield Env(hashing_embedder)


def test_hostile_corpus_each_file_fails_with_its_reason_and_nothing_crashes(env: Env) -> None:
    corpus = hostile_corpus()
    assert len(corpus) >= 25
    results = {key: env.ingest(key, body) for key, (body, _) in corpus.items()}
    got = {key: (r.action, r.reason) for key, r in results.items()}
    assert got == {key: ("failed", reason) for key, (_, reason) in corpus.items()}
    assert env.chunks() == []
    assert {s.reason for s in env.registry.sources()} <= {r.value for r in Reason}


def test_html_drops_scripts_and_keeps_headings_as_sections(env: Env) -> None:
    html = b"""<html><head><title>Tide Guide</title><script>var secret = 'x';</script></head>
    <body><h1>Tides</h1><p>Tides are caused by the Moon.</p><style>.a{}</style>
    <h2>Spring tides</h2><p>Spring tides happen at new and full moon.</p></body></html>"""
    assert env.ingest("guide.html", html).action == "indexed"
    text = " ".join(c.text for c in env.chunks())
    assert "secret" not in text and ".a{}" not in text
    assert "# Tides" in text and "## Spring tides" in text
    assert env.chunks()[0].title == "Tide Guide"


def test_markdown_sections_are_not_merged_when_they_do_not_fit(env: Env) -> None:
    body = "# Guide\n\n## One\n\n" + "alpha " * 12 + "\n\n## Two\n\n" + "beta " * 12 + "\n"
    env.ingest("guide.md", body.encode())
    chunks = env.chunks()
    assert chunks[0].title == "Guide"
    assert not any("alpha" in c.text and "beta" in c.text for c in chunks)
    assert any(c.text.startswith("## Two") for c in chunks)


def test_pdf_pages_are_extracted_with_the_document_title(env: Env) -> None:
    outcome = env.ingest("paper.pdf", make_pdf(["first page about glaciers", "second page about deserts"], "Atlas"))
    assert outcome.action == "indexed"
    text = " ".join(c.text for c in env.chunks())
    assert "glaciers" in text and "deserts" in text and env.chunks()[0].title == "Atlas"


def test_gzip_text_and_jsonl_ids(env: Env) -> None:
    assert env.ingest("notes.txt.gz", gzip.compress(b"compressed words about rivers")).action == "indexed"
    lines = [{"_id": 7, "text": "seven"}, {"id": "eight", "title": "Only a title", "text": ""}]
    out = env.ingest("x.jsonl", "\n".join(json.dumps(x) for x in lines).encode())
    assert out.documents == 2
    assert {c.external_id for c in env.chunks()} == {"notes.txt.gz", "7", "eight"}


def test_content_type_chooses_a_parser_for_keys_without_suffix(env: Env) -> None:
    assert env.ingest("README", b"plain words", ContentType="text/plain").action == "indexed"


def test_parse_notification_shapes() -> None:
    assert parse_notification('{"Event": "s3:TestEvent"}') == []
    with pytest.raises(ValueError):
        parse_notification("[]")
    body = {
        "Records": [
            {"eventName": "ObjectRestore:Completed", "s3": {}},
            {
                "eventName": "ObjectRemoved:DeleteMarkerCreated",
                "s3": {"bucket": {"name": "b"}, "object": {"key": "a+b%2Fc", "sequencer": "0A"}},
            },
        ]
    }
    [event] = parse_notification(body)
    assert event.kind == "removed" and event.key == "a b/c"
    assert normalise_sequencer("0a") > normalise_sequencer("9") and normalise_sequencer("00FF") == normalise_sequencer(
        "ff"
    )


def test_document_first_chunk_numbers_chunks_across_parts() -> None:
    chunker = Chunker(size=8, overlap=2, token_spans=word_spans)
    doc = Document(doc_id="d", text="w " * 20, version="v", first_chunk=5)
    assert next(c.position for c in chunker.run(doc)) == 5
