"""Benchmark ingestion through the S3 event path: SciFact's corpus.jsonl uploaded to the local bucket, indexed by
the real ingest handler (SQS -> poller -> emulated Lambda -> parse, chunk, embed, upsert, registry).

Reports documents/s and chunks/s from upload to idle queue, the raw batch-embedding throughput of the very
same chunk texts measured in the same process (the ceiling: ingestion can only add work around the model),
their ratio, and the process's peak RSS. Prints one JSON line.

Usage::

    python -m bench.ingest [--corpus ../shared/datasets/scifact/corpus.jsonl] [--shards 4] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "datasets" / "scifact" / "corpus.jsonl"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--limit", type=int, default=0, help="only the first N lines")
    args = parser.parse_args()

    data = args.corpus.read_bytes()
    if args.limit:
        data = b"\n".join(data.splitlines()[: args.limit]) + b"\n"
    documents = sum(1 for line in data.splitlines() if line.strip())

    os.environ.setdefault("SHARDRAG_MODEL_DIR", str(ROOT / "build" / "model"))
    os.environ["SHARDRAG_DATA_DIR"] = tempfile.mkdtemp(prefix="shardrag-bench-ingest-")
    os.environ["SHARDRAG_SETTINGS"] = json.dumps({"store": {"shard_count": args.shards}})
    from shardrag import services
    from shardrag.chunking import Chunker
    from shardrag.ingestion.parsers import JsonLinesParser, ParseReport, SourceContext
    from shardrag_local.runtime import DOCUMENTS_BUCKET, LocalRuntime

    runtime = LocalRuntime(serve_aws=False)
    runtime.start()
    try:
        # The handler's cold start (model load) is not ingestion throughput: pay it before the clock starts.
        runtime.index_paths([ROOT / "sample_corpus" / "tides.txt"], prefix="warmup/")
        rss_before = _rss_mb()
        started = time.perf_counter()
        runtime.aws.client("s3").put_object(Bucket=DOCUMENTS_BUCKET, Key="bench/scifact.jsonl", Body=data)
        if not runtime.ingestion.wait_idle(3600):
            raise SystemExit("ingestion did not finish")
        ingest_s = time.perf_counter() - started
        rss_ingest = _rss_mb()
        state = runtime.ingestion.registry.get_source(f"{DOCUMENTS_BUCKET}/bench/scifact.jsonl")
        assert state is not None and state.status == "indexed", state
        chunks = state.chunk_count

        settings = runtime.settings
        model = services.embedder()
        chunker = Chunker(
            size=settings.ingestion.chunk_size, overlap=settings.ingestion.chunk_overlap, token_spans=model.token_spans
        )

        class _Blob:
            size = len(data)

            def parts(self):  # type: ignore[no-untyped-def]
                yield data

        ctx = SourceContext(doc_id="", uri="", key="x.jsonl", version="", tenant="default", settings=settings.ingestion)
        docs = [d for part in JsonLinesParser().parse(_Blob(), ctx, ParseReport()) for d in part]
        texts = [chunker.embedding_text(c) for d in docs for c in chunker.run(d)]
        # The ceiling: the same chunk texts, embedded in one call (the embedder sorts by length and batches).
        started = time.perf_counter()
        model.embed(texts)
        raw_s = time.perf_counter() - started
    finally:
        runtime.stop()

    result = {
        "documents": documents,
        "chunks": chunks,
        "shards": args.shards,
        "ingest_s": round(ingest_s, 2),
        "docs_per_s": round(documents / ingest_s, 1),
        "chunks_per_s": round(chunks / ingest_s, 1),
        "raw_embed_chunks": len(texts),
        "raw_embed_s": round(raw_s, 2),
        "raw_embed_chunks_per_s": round(len(texts) / raw_s, 1),
        "ratio_to_raw_embedding": round((chunks / ingest_s) / (len(texts) / raw_s), 3),
        "peak_rss_mb_after_start": round(rss_before, 1),
        "peak_rss_mb_ingest": round(rss_ingest, 1),
        "chunk_size": runtime.settings.ingestion.chunk_size,
        "chunk_overlap": runtime.settings.ingestion.chunk_overlap,
        "cores": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
