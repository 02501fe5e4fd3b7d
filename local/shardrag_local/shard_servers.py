"""Each embedded shard served by its own process, as a Milvus server is its own service when deployed.

``MilvusClient("shard-0.db")`` would run Milvus Lite (a Python engine) as threads of the runtime's process, where
four shards, the Step Functions engine, the handlers and ingestion all share one GIL: under load the shard
branches queue behind each other and time out although nothing is down. ``milvus-lite server`` serves the same
data directory over gRPC from a process of its own, so the shards search on every core in parallel with the
rest, and the handlers reach them exactly as they reach a deployed Milvus: by URL.

Every shard process runs :func:`main` (``python -m shardrag_local.shard_servers``), which wraps Milvus Lite's
own server with two guarantees the runtime relies on:

- it stops cleanly (in-flight calls drained, the data directory closed) on SIGINT *or* SIGTERM;
- it never outlives the runtime: a watchdog stops it when its parent process is gone, even after a SIGKILL of
  the parent, so a crashed ``make dev`` leaves no orphan holding the data directory's lock.

The processes live in their own session, so a terminal's Ctrl-C reaches only the runtime, which stops ingestion
first and the shards last (a shard stopped before ingestion drains would fail the writes in flight).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shardrag.config import ShardEndpoint

log = logging.getLogger("shardrag.local.shards")

HOST = "127.0.0.1"
#: How often a shard process checks that the runtime that started it is still there.
WATCHDOG_INTERVAL_S = 0.5
#: A shard's gRPC worker threads; one Python engine serialises searches anyway, more only queue.
SERVER_WORKERS = 8
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


@dataclass
class ShardProcess:
    """One shard's server: its data directory, its fixed port (kept across restarts so that clients' URLs stay
    valid) and the running process, if any."""

    shard: int
    data_dir: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float) -> None:
        self.spawn()
        self.wait_ready(timeout_s)

    def spawn(self) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        command = [
            sys.executable,
            "-m",
            "shardrag_local.shard_servers",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--parent-pid",
            str(os.getpid()),
        ]
        # One BLAS / OpenMP thread per shard process: the shards run in parallel as processes already, and
        # numpy's extra threads only spin on the same cores (measured: a 4,400-row dense search took 26 ms of CPU
        # with the default threads, 13 ms with one).
        environment = {**os.environ, **{name: "1" for name in _ONE_THREAD}}
        # Own session: a terminal's SIGINT goes to the runtime only, which stops the shards after ingestion.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
        )

    def wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None, "spawn() first"
        deadline = time.monotonic() + timeout_s
        while not _accepts(HOST, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"shard {self.shard} server exited with {self.process.returncode}; see {self.log_path}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"shard {self.shard} server not listening after {timeout_s:.0f} s")
            time.sleep(0.05)

    def stop(self, grace_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # SIGTERM is a clean stop for our wrapper (drain, close the data directory); SIGKILL only if it hangs.
            process.terminate()
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("shard %d server did not stop in %.0f s; killing it", self.shard, grace_s)
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class ShardServers:
    """The runtime's shard processes: one per embedded (Milvus Lite) shard; configured server URLs pass as is."""

    def __init__(self, endpoints: tuple[ShardEndpoint, ...], log_dir: Path, *, start_timeout_s: float = 60.0) -> None:
        self._endpoints = endpoints
        self._start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self.processes: dict[int, ShardProcess] = {
            i: ShardProcess(i, Path(ep.uri).resolve(), free_port(), log_dir / f"shard-{i}.log")
            for i, ep in enumerate(endpoints)
            if ep.is_lite
        }

    def served_endpoints(self) -> tuple[ShardEndpoint, ...]:
        """The endpoints the handlers use: each embedded shard's server URL in place of its data directory."""
        return tuple(
            ep.model_copy(update={"uri": self.processes[i].uri}) if i in self.processes else ep
            for i, ep in enumerate(self._endpoints)
        )

    def start(self) -> None:
        # Spawned together, then awaited: each process's imports (~1 s) overlap the others'.
        with self._lock:
            try:
                for process in self.processes.values():
                    process.spawn()
                for process in self.processes.values():
                    process.wait_ready(self._start_timeout_s)
            except BaseException:
                self._stop_all()
                raise

    def stop(self) -> None:
        with self._lock:
            self._stop_all()

    def _stop_all(self) -> None:
        # Signal every shard first so that they drain in parallel, then wait for each.
        for process in self.processes.values():
            if process.running and process.process is not None:
                process.process.terminate()
        for process in self.processes.values():
            process.stop()

    def stop_shard(self, shard: int) -> None:
        with self._lock:
            self._process(shard).stop()

    def start_shard(self, shard: int) -> None:
        with self._lock:
            self._process(shard).start(self._start_timeout_s)

    def pids(self) -> list[int]:
        return [p.process.pid for p in self.processes.values() if p.process is not None]

    def _process(self, shard: int) -> ShardProcess:
        if shard not in self.processes:
            raise KeyError(f"shard {shard} is not an embedded shard served by this runtime")
        return self.processes[shard]


# -- the shard process itself -------------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    """Stop this server once the runtime is gone (its parent changes when it dies, however it dies)."""
    while True:
        time.sleep(WATCHDOG_INTERVAL_S)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _accept_client_keepalive() -> None:
    """pymilvus pings every 10 s; a gRPC server's default policy calls that abuse on an idle connection and
    answers GOAWAY (``too_many_pings``), which drops the connection and fails or retries the next call. Milvus Lite
    builds its server without keepalive options, so they are added here, in this process only."""
    import grpc

    build = grpc.server

    def server(*args: Any, options: Any = (), **kwargs: Any) -> Any:
        keepalive = [
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
        return build(*args, options=[*options, *keepalive], **kwargs)

    grpc.server = server


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve one shard's Milvus Lite data directory on loopback")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--max-workers", type=int, default=SERVER_WORKERS)
    args = parser.parse_args(argv)
    # Milvus Lite's server shuts down cleanly on KeyboardInterrupt (drain, close the data directory and its lock).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    if os.getppid() != args.parent_pid:  # the runtime died before this process got here
        return 0
    threading.Thread(target=_watch_parent, args=(args.parent_pid,), daemon=True, name="parent-watchdog").start()
    for noisy in ("pymilvus", "milvus_lite", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _accept_client_keepalive()
    from milvus_lite.adapter.grpc.server import run_server

    with contextlib.suppress(KeyboardInterrupt):
        run_server(data_dir=args.data_dir, host=HOST, port=args.port, max_workers=args.max_workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
