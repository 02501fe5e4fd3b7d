"""The runtime as ``make dev`` runs it: a process with one Milvus Lite server process per shard. Ctrl-C stops
everything, and not even a SIGKILL of the runtime leaves a shard process behind.

GIVEN ``shardrag serve`` started as a subprocess WHEN it is interrupted (or killed) THEN every process it started
is gone. No timing is asserted: the waits are generous bounds on a mechanism, not measurements.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2
WORKERS = 2


def _free_port() -> int:
    from shardrag_local.shard_servers import free_port

    return free_port()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited; only its entry is left


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (pid -> command line), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except FileNotFoundError:
                    continue
                frontier.append(child)
    return found


def _wait(condition: object, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return bool(condition())  # type: ignore[operator]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port, aws_port = _free_port(), _free_port()
    environment = {
        **os.environ,
        "SHARDRAG_DATA_DIR": str(tmp_path / "data"),
        "SHARDRAG_SETTINGS": json.dumps({"store": {"shard_count": SHARDS}}),
        "SHARDRAG_MODEL_DIR": str(ROOT / "build" / "model"),
    }
    # Its own process group, like a shell job: SIGINT to the group is what a terminal's Ctrl-C sends.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shardrag_local.cli",
            "serve",
            "--no-sample",
            "--port",
            str(port),
            "--aws-port",
            str(aws_port),
            "--query-workers",
            str(WORKERS),
        ],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(api + "/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return process.poll() is not None

    try:
        assert _wait(healthy, 180), "the runtime never answered /health"
        assert process.poll() is None, f"the runtime exited with {process.returncode}"
        yield process, api
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _shard_processes(process: subprocess.Popen[bytes]) -> dict[int, str]:
    children = _descendants(process.pid)
    shards = {pid: cmd for pid, cmd in children.items() if "shardrag_local.shard_servers" in cmd}
    assert len(shards) == SHARDS, f"expected {SHARDS} shard processes under the runtime, found {children}"
    workers = {pid: cmd for pid, cmd in children.items() if "multiprocessing.spawn" in cmd}
    assert len(workers) == WORKERS, f"expected {WORKERS} query workers under the runtime, found {children}"
    return children


def test_ctrl_c_stops_the_runtime_and_every_shard_process(served: tuple[subprocess.Popen[bytes], str]) -> None:
    process, api = served
    children = _shard_processes(process)
    request = urllib.request.Request(
        api + "/query", data=json.dumps({"question": "anything at all", "generate": False}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # the shards answer through their processes
        assert json.loads(response.read())["shards"]["searched"] == list(range(SHARDS))

    os.killpg(process.pid, signal.SIGINT)

    assert process.wait(timeout=120) == 0
    assert _wait(lambda: not any(_alive(pid) for pid in children), 30), {
        pid: cmd for pid, cmd in children.items() if _alive(pid)
    }


def test_a_killed_runtime_leaves_no_shard_process(served: tuple[subprocess.Popen[bytes], str]) -> None:
    process, _ = served
    children = _shard_processes(process)

    process.kill()  # SIGKILL: no handler runs; each shard process must notice on its own
    process.wait()

    assert _wait(lambda: not any(_alive(pid) for pid in children), 60), {
        pid: cmd for pid, cmd in children.items() if _alive(pid)
    }


def test_a_sigterm_to_the_process_group_under_load_answers_every_query_in_flight(
    served: tuple[subprocess.Popen[bytes], str],
) -> None:
    """``kill -- -PGID`` (how a service manager or ``devserver.sh stop`` ends the job) reaches the query workers too.
    The queries in flight must still be answered (the workers stop after the front stops taking requests), then
    everything stops. Before, the workers died with the signal and each query in flight got a 500."""
    import threading
    import urllib.error

    process, api = served
    children = _shard_processes(process)
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        body = json.dumps({"question": "anything at all", "generate": False}).encode()
        while not stop.is_set():
            try:
                request = urllib.request.Request(api + "/query", data=body, method="POST")
                with urllib.request.urlopen(request, timeout=60) as response:
                    statuses.append(response.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError:  # the listener is closed: the runtime has stopped taking requests
                return

    clients = [threading.Thread(target=client, daemon=True) for _ in range(6)]
    for thread in clients:
        thread.start()
    assert _wait(lambda: len(statuses) >= 20, 120), f"the load never got going: {statuses}"

    os.killpg(process.pid, signal.SIGTERM)

    assert process.wait(timeout=120) == 0
    stop.set()
    for thread in clients:
        thread.join(timeout=70)
    assert set(statuses) <= {200, 429}, {code: statuses.count(code) for code in set(statuses)}
    assert _wait(lambda: not any(_alive(pid) for pid in children), 30), {
        pid: cmd for pid, cmd in children.items() if _alive(pid)
    }
