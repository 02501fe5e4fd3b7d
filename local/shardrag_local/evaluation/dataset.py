"""A BEIR-layout test collection: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

A conversational collection (``conversations.jsonl`` instead of ``queries.jsonl``, as ``mtrag-mini``) is read with
each turn's own ``question`` (the last user turn alone) as its query: the retrieval maths is measured here, not a
rewrite of the conversation.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BeirDocument:
    doc_id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def whole_text(self) -> str:
        """What BEIR / sentence-transformers embed for a document: ``title + " " + text``."""
        return f"{self.title} {self.text}".strip()

    def jsonl_line(self) -> str:
        """The line ingestion reads from a JSON Lines bulk file (the document keeps its id)."""
        return json.dumps(
            {"_id": self.doc_id, "title": self.title, "text": self.text, "metadata": self.metadata}, ensure_ascii=False
        )


@dataclass(frozen=True)
class BeirDataset:
    """Corpus, the queries of one split (only those with judgments, as BEIR loads them) and their qrels."""

    name: str
    root: Path
    split: str
    corpus: list[BeirDocument]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    checksums: dict[str, str]

    @classmethod
    def load(cls, root: Path | str, *, split: str = "test", limit_queries: int | None = None) -> BeirDataset:
        """Read a BEIR folder. ``limit_queries`` keeps the first N judged queries (in ``queries.jsonl`` order)."""
        root = Path(root)
        conversational = not (root / "queries.jsonl").is_file() and (root / "conversations.jsonl").is_file()
        files = {
            "corpus": root / "corpus.jsonl",
            "queries": root / ("conversations.jsonl" if conversational else "queries.jsonl"),
            "qrels": root / "qrels" / f"{split}.tsv",
        }
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"not a BEIR folder (missing {', '.join(missing)})")
        corpus = [
            BeirDocument(
                doc_id=str(row["_id"]),
                title=str(row.get("title") or ""),
                text=str(row.get("text") or ""),
                metadata=dict(row.get("metadata") or {}),
            )
            for row in _jsonl(files["corpus"])
        ]
        qrels = _read_qrels(files["qrels"])
        field = "question" if conversational else "text"
        queries = {str(row["_id"]): str(row[field]) for row in _jsonl(files["queries"]) if str(row["_id"]) in qrels}
        if limit_queries is not None:
            queries = dict(list(queries.items())[:limit_queries])
        # Judgments of queries we do not run would otherwise count as misses.
        qrels = {q: j for q, j in qrels.items() if q in queries}
        checksums = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files.values()}
        return cls(root.name, root, split, corpus, queries, qrels, checksums)

    def write_jsonl_parts(self, folder: Path, *, docs_per_file: int) -> list[Path]:
        """Split the corpus into JSON Lines files of ``docs_per_file`` documents (bounded ingest batches, and
        progress visible file by file)."""
        if docs_per_file < 1:
            raise ValueError("docs_per_file must be at least 1")
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for part, start in enumerate(range(0, len(self.corpus), docs_per_file)):
            path = folder / f"{self.name}-{part:04d}.jsonl"
            lines = (doc.jsonl_line() for doc in self.corpus[start : start + docs_per_file])
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            paths.append(path)
        return paths


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for row in reader:
            if len(row) < 3 or row[0] == "query-id":  # the header, or a blank line
                continue
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return qrels
