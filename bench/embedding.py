"""Benchmark the ONNX embedder: cold start, single-query latency, batch throughput. Prints JSON.

Usage::

    python bench/embedding.py [--model-dir build/model] [--queries 200] [--passages 128]

Cold start is measured in fresh interpreters (imports + session + tokenizer + one query), as a Lambda cold
start pays it. Latency is a short query, embedded alone, with one intra-op thread (what a 1-vCPU Lambda gets)
and with onnxruntime's default (all cores). Throughput is 200-token passages at batch 32, the ingestion case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shardrag.embedding.onnx import TOKENIZER_FILE, OnnxEmbedder

QUERY = "How does the router pick which shards to search for a question?"
PASSAGE_TOKENS = 200
BATCH = 32

# A fixed vocabulary of whole-word tokens, so that every passage is exactly PASSAGE_TOKENS long.
_VOCABULARY = (
    "shard vector index query latency lambda function step parallel branch milvus collection embedding "
    "token passage retrieval ranking fusion generator prompt context budget cold start memory throughput "
    "serverless event queue ingestion chunk document model export onnx runtime thread batch padding"
)
_WORDS = tuple(_VOCABULARY.split())

_COLD_START = """
import json, time
t0 = time.perf_counter()
from shardrag.embedding.onnx import OnnxEmbedder
t1 = time.perf_counter()
e = OnnxEmbedder({model_dir!r}, threads={threads})
e.warm_up()
t2 = time.perf_counter()
e.embed([{query!r}])
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1, "first_query_s": t3 - t2, "total_s": t3 - t0}}))
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def passages(model_dir: Path, count: int, tokens: int, seed: int = 7) -> list[str]:
    """``count`` distinct texts of exactly ``tokens`` tokens (``[CLS]``/``[SEP]`` included)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        text = " ".join(rng.choice(_WORDS) for _ in range(tokens * 2))
        offsets = tokenizer.encode(text).offsets
        # Cut after the (tokens - 2)-th word piece: [CLS] and [SEP] make up the rest.
        texts.append(text[: offsets[tokens - 2][1]])
    return texts


def cold_start(model_dir: Path, threads: int, runs: int) -> dict[str, float]:
    """Median over ``runs`` fresh interpreters of import, load and first-query times."""
    code = _COLD_START.format(model_dir=str(model_dir), threads=threads, query=QUERY)
    samples = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {key: round(statistics.median(s[key] for s in samples), 4) for key in samples[0]}


def latency(embedder: OnnxEmbedder, runs: int) -> dict[str, float]:
    """Single-query latency (ms) over ``runs`` calls, after a warm-up."""
    for _ in range(10):
        embedder.embed([QUERY])
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        embedder.embed([QUERY])
        times.append((time.perf_counter() - started) * 1000)
    return {
        "p50_ms": round(_percentile(times, 0.50), 3),
        "p95_ms": round(_percentile(times, 0.95), 3),
        "mean_ms": round(statistics.fmean(times), 3),
    }


def throughput(embedder: OnnxEmbedder, texts: list[str], repeats: int) -> dict[str, float]:
    """Texts per second embedding ``texts`` (best of ``repeats``, after a one-batch warm-up)."""
    embedder.embed(texts[:BATCH])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        embedder.embed(texts)
        best = min(best, time.perf_counter() - started)
    return {"texts_per_s": round(len(texts) / best, 2), "seconds": round(best, 3)}


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, default=Path("build/model"))
    parser.add_argument("--queries", type=int, default=200, help="single-query runs per thread setting")
    parser.add_argument("--passages", type=int, default=128, help="200-token passages per throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput repeats (best is reported)")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh interpreters for cold start")
    args = parser.parse_args(argv)

    import onnxruntime

    manifest_path = args.model_dir / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    texts = passages(args.model_dir, args.passages, PASSAGE_TOKENS)
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "model": {
            "dir": str(args.model_dir),
            "optimized": manifest.get("optimized"),
            "sha256": manifest.get("model_sha256"),
            "size_mb": round((args.model_dir / "model.onnx").stat().st_size / 1e6, 1),
        },
        "cold_start_s": cold_start(args.model_dir, threads=0, runs=args.cold_runs),
        "single_query": {},
        "batch_throughput": {"passage_tokens": PASSAGE_TOKENS, "batch_size": BATCH, "passages": len(texts)},
    }
    for label, threads in (("threads_1", 1), ("threads_default", 0)):
        embedder = OnnxEmbedder(args.model_dir, batch_size=BATCH, threads=threads)
        started = time.perf_counter()
        embedder.warm_up()
        load_s = time.perf_counter() - started
        result["single_query"][label] = {"load_s": round(load_s, 4), **latency(embedder, args.queries)}
        result["batch_throughput"][label] = throughput(embedder, texts, args.repeats)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
