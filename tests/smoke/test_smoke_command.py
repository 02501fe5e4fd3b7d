"""The smoke test of a deployed stack, run against the local runtime: the same command, the same checks, so that
``make smoke ENV=…`` is itself tested (health, a cited answer, a 400, upload -> answerable -> delete -> gone through
the bucket, 503 -> 200 with the store stopped and started)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A local runtime serving its API and its AWS endpoint on free loopback ports (its own, not :8080/:4566)."""
    from shardrag import services
    from shardrag_local.api_server import ApiServer
    from shardrag_local.emulator import Endpoint
    from shardrag_local.runtime import LocalRuntime

    previous = {k: os.environ.get(k) for k in ("SHARDRAG_SETTINGS", "SHARDRAG_DATA_DIR")}
    os.environ["SHARDRAG_SETTINGS"] = json.dumps({"store": {"shard_count": 2}})
    os.environ["SHARDRAG_DATA_DIR"] = str(tmp_path_factory.mktemp("smoke-data"))
    services.reset_caches()
    aws = Endpoint(port=_free_port())
    runtime = LocalRuntime(aws_endpoint=aws, serve_aws=True)
    runtime.start()
    runtime.ensure_sample_corpus()
    server = ApiServer(runtime, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", aws.url
    finally:
        server.shutdown()
        server.server_close()
        runtime.stop()
        services.reset_caches()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _smoke(api: str, aws: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "shardrag_local.smoke", "--local", "--api", api, "--aws-endpoint", aws, *extra]
    environment = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=environment, check=False)


def test_smoke_command_passes_against_the_local_runtime(endpoints: tuple[str, str]) -> None:
    api, aws = endpoints
    result = _smoke(api, aws, "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    for line in (
        "ok   health",
        "ok   cited answer",
        "ok   400 for bad input",
        "ok   upload answerable (s3://shardrag-documents/smoke/zorblat-",
        "ok   delete removed it from the answers",
        "ok   503 shards_unavailable with the store stopped",
        "ok   200 again after the store restarted",
    ):
        assert line in result.stdout, result.stdout
    assert result.stdout.rstrip().endswith("smoke ok")


def test_smoke_command_fails_when_a_check_does_not_hold(endpoints: tuple[str, str]) -> None:
    # A question the API refuses (over the length limit) gets no cited answer: the run must stop there, and fail.
    api, aws = endpoints
    result = _smoke(api, aws, "--question", "x" * 5000, "--timeout", "5")
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL no cited answer"), result.stderr
