"""Benchmark embedding reuse: re-upload a long document with one paragraph edited, against its first ingest.

Mirrors the acceptance check ``L-reingest-reuse`` in process (the same document shape, the same S3 event path and
the same question: a BM25 query for the edited paragraph's unique word, polled every 0.25 s, through the real
state machine): the time from upload until the document is answerable (first ingest: ``Oldmark`` found;
overwrite: ``Newmark`` found and ``Oldmark`` gone), first as the check does it (the edit uploaded 3 s after the
first version became answerable, while the first ingest may still be writing), then with the edit uploaded after
the queue is idle. The ingest work (upload to an idle queue, nobody querying: the polls compete with the
embedder for the cores; and, of it, the time spent in the ingest service, without the local queue's delivery,
whose poll backs off to 0.5 s when idle) and how many chunk texts the model embedded are measured on their own,
first version then edit.
Then the overwritten document is deleted and the edited one ingested fresh under another key, and the two are
compared row by row: text, dense vector bytes and sparse vector, so reuse must leave the index exactly what a
fresh ingest gives. The delete comes first because a fresh copy beside the overwritten one would be weighed
against another corpus: BM25 weights use the corpus's mean unit length, which the copy itself changes. Prints
one JSON line.

Usage::

    python -m bench.reuse [--paragraphs 1000,2900] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = "granite harbor meadow lantern copper violet thunder orchard pepper falcon willow ember river stone cloud maple"


def _document(paragraphs: int, edited: str) -> bytes:
    words = WORDS.split()
    texts = [" ".join(words[(i * 5 + j) % len(words)] for j in range(95)) + f" section{i}" for i in range(paragraphs)]
    texts[paragraphs // 2] = edited
    return "\n\n".join(texts).encode()


def _until(predicate: Callable[[], bool], limit_s: float = 1800) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if predicate():
            return time.perf_counter() - started
        time.sleep(0.25)
    raise SystemExit("never answerable")


def _rows(stores: Sequence[Any], doc_id: str) -> list[Any]:
    """The document's rows a query sees now (rows an overwrite retired stay stored for ``retire_grace_s``)."""
    from shardrag import services

    seen = services.epoch_clock().snapshot()
    rows = (row for store in stores for row in store.stored_chunks(doc_id))
    return sorted(
        (row for row in rows if seen.sees(row.chunk.epoch_from, row.chunk.epoch_to)), key=lambda r: r.chunk.position
    )


def _compare(a: list[Any], b: list[Any]) -> dict[str, Any]:
    texts = sum(x.chunk.text == y.chunk.text for x, y in zip(a, b, strict=False))
    dense = sum(
        np.asarray(x.vector, np.float32).tobytes() == np.asarray(y.vector, np.float32).tobytes()
        for x, y in zip(a, b, strict=False)
    )
    sparse = sum(x.sparse == y.sparse for x, y in zip(a, b, strict=False))
    worst = max(
        (float(np.max(np.abs(np.asarray(x.vector) - np.asarray(y.vector)))) for x, y in zip(a, b, strict=False)),
        default=0.0,
    )
    return {
        "rows": [len(a), len(b)],
        "same_text": texts,
        "same_dense_bytes": dense,
        "same_sparse": sparse,
        "max_abs_dense_difference": worst,
        "identical": len(a) == len(b) == texts == dense == sparse,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--paragraphs", default="1000,2900", help="document sizes (one chunk per paragraph)")
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()

    os.environ.setdefault("SHARDRAG_MODEL_DIR", str(ROOT / "build" / "model"))
    os.environ["SHARDRAG_DATA_DIR"] = tempfile.mkdtemp(prefix="shardrag-bench-reuse-")
    os.environ["SHARDRAG_SETTINGS"] = json.dumps({"store": {"shard_count": args.shards}})
    from shardrag import services
    from shardrag.identity import object_doc_id
    from shardrag_local.runtime import DOCUMENTS_BUCKET, LocalRuntime

    runtime = LocalRuntime(serve_aws=False)
    runtime.start()
    results = []
    try:
        runtime.index_paths([ROOT / "sample_corpus" / "tides.txt"], prefix="warmup/")  # the handler's cold start
        from shardrag.embedding.onnx import OnnxEmbedder

        embedded: list[str] = []
        original = OnnxEmbedder.embed

        def counted(self: OnnxEmbedder, texts: Sequence[str]) -> Any:
            embedded.extend(texts)
            return original(self, texts)

        # On the class: ingestion embeds through a view of the loaded model (``reproducible()``).
        OnnxEmbedder.embed = counted  # type: ignore[method-assign]
        from shardrag.ingestion.service import IngestService

        # Time spent in the ingest service per key (the handler's work, without the local queue's delivery).
        handled: dict[str, float] = {}
        run = IngestService.run

        def timed(self: IngestService, event: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return run(self, event, **kwargs)
            finally:
                handled[event.key] = handled.get(event.key, 0.0) + time.perf_counter() - started

        IngestService.run = timed  # type: ignore[method-assign]
        s3 = runtime.aws.client("s3")

        def found(word: str) -> bool:
            status, body = runtime.execute({"question": word, "top_k": 5, "generate": False, "mode": "bm25"})
            return status == 200 and word in json.dumps(body)

        def chunks_embedded() -> int:
            return sum(1 for t in embedded if "section" in t or "edited paragraph" in t)

        for paragraphs in [int(p) for p in args.paragraphs.split(",")]:
            tag = uuid.uuid4().hex[:8]
            key, fresh_key = f"reuse-{tag}/long.md", f"fresh-{tag}/long.md"
            first_body = _document(paragraphs, f"The edited paragraph mentions Oldmark{tag} here.")
            edited_body = _document(paragraphs, f"The edited paragraph now mentions Newmark{tag} instead.")

            # As the acceptance check does: the edit is uploaded 3 s after the first version became answerable,
            # while the first ingest may still be writing its later parts.
            overlap_key = f"overlap-{tag}/long.md"
            started = time.perf_counter()
            s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=overlap_key, Body=first_body)
            overlap_first = _until(lambda tag=tag: found(f"Oldmark{tag}"))
            time.sleep(3)
            started = time.perf_counter()
            s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=overlap_key, Body=edited_body)
            overlap_edit = _until(lambda tag=tag: found(f"Newmark{tag}") and not found(f"Oldmark{tag}"))
            runtime.ingestion.wait_idle(1800)
            s3.delete_object(Bucket=DOCUMENTS_BUCKET, Key=overlap_key)
            runtime.ingestion.wait_idle(600)

            # The ingest work, nobody querying: upload to an idle queue, first version then the edit.
            work_key = f"work-{tag}/long.md"
            work: dict[str, tuple[float, int, float]] = {}
            for name, body in (("first", first_body), ("edit", edited_body)):
                time.sleep(1)
                embedded.clear()
                handled.clear()
                started = time.perf_counter()
                s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=work_key, Body=body)
                runtime.ingestion.wait_idle(1800)
                work[name] = (time.perf_counter() - started, chunks_embedded(), handled.get(work_key, 0.0))
            s3.delete_object(Bucket=DOCUMENTS_BUCKET, Key=work_key)
            runtime.ingestion.wait_idle(600)

            # Answerable, as the check polls it, after the first version is completely in.
            s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=key, Body=first_body)
            first_answerable = _until(lambda tag=tag: found(f"Oldmark{tag}"))
            runtime.ingestion.wait_idle(1800)
            time.sleep(3)
            s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=key, Body=edited_body)
            edit_answerable = _until(lambda tag=tag: found(f"Newmark{tag}") and not found(f"Oldmark{tag}"))
            runtime.ingestion.wait_idle(1800)

            overwritten = _rows(services.shard_stores().all(), object_doc_id("default", key))
            s3.delete_object(Bucket=DOCUMENTS_BUCKET, Key=key)
            runtime.ingestion.wait_idle(600)
            embedded.clear()
            started = time.perf_counter()
            s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=fresh_key, Body=edited_body)
            runtime.ingestion.wait_idle(1800)
            fresh_idle = time.perf_counter() - started
            comparison = _compare(
                overwritten, _rows(services.shard_stores().all(), object_doc_id("default", fresh_key))
            )
            s3.delete_object(Bucket=DOCUMENTS_BUCKET, Key=fresh_key)
            runtime.ingestion.wait_idle(600)
            results.append(
                {
                    "paragraphs": paragraphs,
                    "chunks": comparison["rows"][0],
                    "first_ingest": {
                        "answerable_s": round(first_answerable, 2),
                        "work_s": round(work["first"][0], 2),
                        "handler_s": round(work["first"][2], 2),
                        "chunks_embedded": work["first"][1],
                    },
                    "one_paragraph_edit": {
                        "answerable_s": round(edit_answerable, 2),
                        "work_s": round(work["edit"][0], 2),
                        "handler_s": round(work["edit"][2], 2),
                        "chunks_embedded": work["edit"][1],
                    },
                    "speedup_work": round(work["first"][0] / work["edit"][0], 1),
                    "speedup_handler": round(work["first"][2] / max(work["edit"][2], 1e-3), 1),
                    "speedup_answerable": round(first_answerable / max(edit_answerable, 0.25), 1),
                    "edit_during_first_ingest": {
                        "first_answerable_s": round(overlap_first, 2),
                        "edit_answerable_s": round(overlap_edit, 2),
                        "speedup_answerable": round(overlap_first / max(overlap_edit, 0.25), 1),
                    },
                    "fresh_ingest_of_edited_idle_s": round(fresh_idle, 2),
                    "versus_fresh_ingest": comparison,
                }
            )
            print(json.dumps(results[-1]), flush=True)
    finally:
        runtime.stop()
    print(json.dumps({"benchmark": "reingest_reuse", "shards": args.shards, "cores": os.cpu_count(), "runs": results}))


if __name__ == "__main__":
    main()
