"""Turning uploaded bytes into a :class:`Document` (plain text and Markdown; more formats come with ingestion)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from shardrag.chunking import Document

_HEADING = re.compile(r"^\s{0,3}#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def parse_text(data: bytes, *, doc_id: str, source: str, version: str = "") -> Document:
    """A UTF-8 text or Markdown document; the title is the first level-1 heading, else the file name."""
    text = data.decode("utf-8")
    heading = _HEADING.search(text)
    title = heading.group(1) if heading else PurePosixPath(source).stem.replace("-", " ").replace("_", " ")
    return Document(doc_id=doc_id, text=text, source=source, title=title, version=version)
