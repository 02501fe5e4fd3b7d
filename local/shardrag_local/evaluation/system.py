"""ShardRAG under test through its real path: a fresh local runtime, the corpus uploaded to the documents bucket
(S3 -> SQS -> the ingest Lambda indexes it), and every query sent to ``POST /query`` over loopback HTTP."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shardrag_local.evaluation.metrics import dedupe_ranking

if TYPE_CHECKING:
    from shardrag_local.api_server import ApiServer
    from shardrag_local.runtime import LocalRuntime

log = logging.getLogger("shardrag.eval")

PROJECT_ROOT = Path(__file__).resolve().parents[3]
_ENV_KEYS = ("SHARDRAG_SETTINGS", "SHARDRAG_DATA_DIR", "SHARDRAG_MODEL_DIR")


@dataclass(frozen=True)
class IngestReport:
    files: int
    documents: int
    chunks: int
    rejected_lines: int
    failed_files: list[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "documents": self.documents,
            "chunks": self.chunks,
            "rejected_lines": self.rejected_lines,
            "failed_files": self.failed_files,
            "seconds": round(self.seconds, 1),
            "documents_per_s": round(self.documents / self.seconds, 1) if self.seconds else None,
            "chunks_per_s": round(self.chunks / self.seconds, 1) if self.seconds else None,
        }


@dataclass(frozen=True)
class QueryObservation:
    """One ``POST /query``: the ranked chunk hits, the documents they rank, and where the time went."""

    query_id: str
    chunk_ids: list[str]
    doc_ids: list[str]
    client_ms: float
    timings_ms: dict[str, float]
    shard_ms: dict[str, float] = field(default_factory=dict)
    degraded: bool = False
    #: The response's dense feedback status (``ok``, ``empty``, ``failed``), or ``None`` when none ran.
    feedback: str | None = None

    @property
    def documents(self) -> list[str]:
        """Document ranking: each document at the rank of its best chunk."""
        return dedupe_ranking(self.doc_ids)


class LocalSystem:
    """A fresh local runtime (its own data directory) with the HTTP API on an ephemeral loopback port.

    Use as a context manager. One per process: moto's mock is process-global, so a second runtime for another
    shard count must run in another process (``bench/shards.py`` does that).
    """

    def __init__(self, *, shards: int, data_dir: Path | None = None, settings: dict[str, Any] | None = None) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.shards = shards
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="shardrag-eval-"))
        self._settings: dict[str, Any] = {**(settings or {}), "store": {"shard_count": shards}}
        self._saved_env: dict[str, str | None] = {}
        self.runtime: LocalRuntime | None = None
        self._server: ApiServer | None = None
        self.url = ""

    def __enter__(self) -> LocalSystem:
        from shardrag import services

        self._saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
        os.environ["SHARDRAG_SETTINGS"] = json.dumps(self._settings)
        os.environ["SHARDRAG_DATA_DIR"] = str(self.data_dir)
        # The default model path is relative; pin it so that the harness runs from any working directory.
        os.environ.setdefault("SHARDRAG_MODEL_DIR", str(PROJECT_ROOT / "build" / "model"))
        services.reset_caches()
        from shardrag_local.api_server import ApiServer
        from shardrag_local.runtime import LocalRuntime

        self.runtime = LocalRuntime(serve_aws=False)
        self.runtime.start()
        self._server = ApiServer(self.runtime, port=0)
        threading.Thread(target=self._server.serve_forever, name="shardrag-eval-api", daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from shardrag import services

        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self.runtime is not None:
            self.runtime.stop()
        services.reset_caches()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def ingest(
        self, paths: Sequence[Path], *, prefix: str = "eval/", progress: Callable[[str], None] | None = None
    ) -> IngestReport:
        """Upload each file to the documents bucket and wait until the S3 event path has indexed it.

        Files go one at a time so that progress is visible and the measured throughput is ingestion's own
        (upload + queue + ingest Lambda: parse, chunk, embed, upsert, flush, registry), not a queue backlog.
        """
        runtime = self._require_runtime()
        from shardrag_local.runtime import DOCUMENTS_BUCKET

        documents = chunks = rejected = 0
        failed: list[str] = []
        started = time.perf_counter()
        for n, path in enumerate(paths, start=1):
            runtime.index_paths([path], prefix=prefix, timeout_s=1800)
            state = runtime.ingestion.registry.get_source(f"{DOCUMENTS_BUCKET}/{prefix}{path.name}")
            if state is None or state.status != "indexed":
                failed.append(f"{path.name}: {state.status if state else 'no registry entry'}")
            else:
                documents += state.doc_count
                chunks += state.chunk_count
                rejected += state.rejected_lines
            if progress is not None:
                elapsed = time.perf_counter() - started
                progress(
                    f"ingested {n}/{len(paths)} files: {documents} documents, {chunks} chunks, "
                    f"{elapsed:.0f} s ({documents / elapsed:.1f} docs/s)"
                )
        return IngestReport(len(paths), documents, chunks, rejected, failed, time.perf_counter() - started)

    def query(
        self, query_id: str, question: str, *, top_k: int = 50, mode: str | None = None, timeout_s: float = 120
    ) -> QueryObservation:
        """``POST /query`` with ``generate: false``; the client clock covers the whole HTTP round trip.

        ``mode`` (``dense``, ``bm25``, ``hybrid``) is sent when given; without it the runtime's default applies.
        ``hybrid-no-feedback`` is hybrid with ``"feedback": false`` (the first pass alone).
        """
        # Rankings deeper than 50 come back as ids and scores only (the API's payload-bounded evaluation mode).
        fields: dict[str, Any] = {"question": question, "generate": False, "top_k": top_k, "include_text": top_k <= 50}
        if mode == "hybrid-no-feedback":
            fields.update(mode="hybrid", feedback=False)
        elif mode is not None:
            fields["mode"] = mode
        body = json.dumps(fields).encode()
        request = urllib.request.Request(
            self.url + "/query", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise RuntimeError(f"POST /query (mode {mode}, top_k {top_k}) answered {exc.code}: {detail}") from None
        client_ms = (time.perf_counter() - started) * 1000
        timings = payload.get("timings_ms", {})
        hits = payload.get("hits", [])
        return QueryObservation(
            query_id=query_id,
            chunk_ids=[str(h["chunk_id"]) for h in hits],
            doc_ids=[str(h["doc_id"]) for h in hits],
            client_ms=client_ms,
            timings_ms={k: float(v) for k, v in timings.items() if isinstance(v, int | float)},
            shard_ms={str(k): float(v) for k, v in (timings.get("shards") or {}).items()},
            degraded=bool(payload.get("degraded")),
            feedback=(payload.get("feedback") or {}).get("status"),
        )

    def _require_runtime(self) -> LocalRuntime:
        if self.runtime is None:
            raise RuntimeError("LocalSystem is not started: use it as a context manager")
        return self.runtime
