"""The integration tier's shared local runtime: real Milvus Lite shards, the real ONNX model, moto running the
real ASL with the real handlers. One runtime per test package (moto's in-process mock is process-global)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION_SHARDS = 4


@pytest.fixture(scope="package")
def local_runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from shardrag import services
    from shardrag_local.runtime import LocalRuntime

    data_dir: Path = tmp_path_factory.mktemp("shardrag-data")
    previous = {k: os.environ.get(k) for k in ("SHARDRAG_SETTINGS", "SHARDRAG_DATA_DIR")}
    # No time budget for dense feedback: how loaded the test machine is must not decide whether a query gets its
    # second round (the budget is tested in tests/unit/test_dense_feedback.py).
    # No grace before retired rows are deleted: with one, an overwrite here queues a deletion that SQS delays by a
    # minute, and this runtime (alive for the whole package) would hand it to whatever ingest service a later
    # module has installed in ``services`` (the fault-injection harness does). Once, in a full run, a harness test's
    # armed crash went unreached while this runtime's ingest poller was invoking the handler. The grace is tested
    # through the harness (test_integrity_faults, test_overwrite_visibility).
    os.environ["SHARDRAG_SETTINGS"] = json.dumps(
        {
            "store": {"shard_count": INTEGRATION_SHARDS},
            "retrieval": {"feedback": {"budget_ms": 0}},
            "ingestion": {"retire_grace_s": 0},
        }
    )
    os.environ["SHARDRAG_DATA_DIR"] = str(data_dir)
    services.reset_caches()
    runtime = LocalRuntime(serve_aws=False)
    runtime.start()
    runtime.ensure_sample_corpus()
    try:
        yield runtime
    finally:
        runtime.stop()
        services.reset_caches()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="package")
def api_url(local_runtime: object) -> Iterator[str]:
    """The local HTTP API on an ephemeral loopback port."""
    from shardrag_local.api_server import ApiServer

    server = ApiServer(local_runtime, port=0)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
