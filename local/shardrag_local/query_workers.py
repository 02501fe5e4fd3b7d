"""Query executions in worker processes, as Step Functions and Lambda run them on machines of their own.

One Python process runs one query's Step Functions engine, its Lambda handlers and their JSON and pydantic work
under one GIL: measured with py-spy and per-process CPU time, the runtime's process spent ~150 ms of CPU per
query while each shard process spent ~26, so one process caps the local API at ~6 queries/s however many cores
the machine has. Each worker here is a complete query path — moto's engine running
``statemachines/query.asl.json`` with the real handlers, reaching the shard processes by URL — so executions run
on every core. The front process keeps what is stateful: the HTTP API and its admission bound, the emulated
S3/SQS/DynamoDB, ingestion and the shard processes.

A worker runs several executions at once (threads: most of an execution waits on a shard or the model), never
outlives the runtime (parent watchdog, and it exits when its pipe closes), and starts with the settings the
front serves (``SHARDRAG_SETTINGS`` names the shard servers' URLs).
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger("shardrag.local.workers")


class WorkersUnavailable(RuntimeError):
    """No query worker can run the execution (the runtime is stopping, or its workers died): a 503, retry later."""


#: Executions one worker runs at once; the API's admission bound keeps the total lower anyway.
WORKER_THREADS = 32
_WATCHDOG_INTERVAL_S = 0.5


def _serve(connection: Connection, parent_pid: int, project_root: str) -> None:
    """A worker process: deploy the query workflow in its own emulation, then run what the front sends."""
    # The front decides when a worker stops (``None`` or a closed pipe, after it has stopped taking requests; a
    # kill past its grace). A terminal's Ctrl-C or a SIGTERM to the whole process group (``kill -- -PGID``, a
    # service manager) reaches the workers too, and would otherwise end them under the queries in flight, each
    # then answered 500 by a front that was still serving.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Parallelism comes from the executions a worker runs at once and from the other processes: a second BLAS or
    # onnxruntime thread per query would only spin on the same cores (set before numpy or onnxruntime load).
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    _one_embedding_thread()

    def watch_parent() -> None:
        while True:
            time.sleep(_WATCHDOG_INTERVAL_S)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch_parent, daemon=True, name="parent-watchdog").start()
    from shardrag.api_contract import map_execution
    from shardrag.config import cached_settings

    from shardrag_local.emulator import LocalAws
    from shardrag_local.runtime import configure_process_environment

    configure_process_environment()
    aws = LocalAws(Path(project_root), serve=False)
    aws.start()
    arn = aws.deploy_query_workflow(cached_settings().store.shard_count)
    send_lock = threading.Lock()

    def run(request_id: int, execution_input: str) -> None:
        try:
            result = aws.start_sync_execution(arn, execution_input, name=uuid.uuid4().hex)
            reply: tuple[int, int, dict[str, Any]] = (request_id, *map_execution(result))
        except Exception as exc:  # the engine itself failed: a 500, as a failed StartSyncExecution would be
            log.exception("query worker: execution failed")
            reply = (request_id, 500, {"error": {"code": "internal_error", "message": type(exc).__name__}})
        with send_lock:
            connection.send(reply)

    with send_lock:
        connection.send(("ready", os.getpid()))
    with ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="execution") as pool:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            pool.submit(run, *message)
    aws.stop()


def _one_embedding_thread() -> None:
    """One onnxruntime intra-op thread per query embedding, unless the settings chose a number."""
    from shardrag import env

    raw = os.environ.get(env.SETTINGS_JSON)
    data = json.loads(raw) if raw else {}
    embedding = data.setdefault("embedding", {})
    if not embedding.get("threads"):
        embedding["threads"] = 1
        os.environ[env.SETTINGS_JSON] = json.dumps(data)


class _Worker:
    def __init__(self, context: Any, project_root: Path) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(child, os.getpid(), str(project_root)), daemon=True, name="shardrag-query-worker"
        )
        self.process.start()
        child.close()
        self.pending: dict[int, Future[tuple[int, dict[str, Any]]]] = {}
        self.send_lock = threading.Lock()
        self.reader: threading.Thread | None = None


class QueryWorkers:
    """``count`` worker processes; :meth:`execute` runs one execution on the least busy one."""

    def __init__(self, count: int, project_root: Path) -> None:
        if count < 1:
            raise ValueError("at least one query worker")
        self._count = count
        self._root = project_root
        self._workers: list[_Worker] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def spawn(self) -> None:
        """Start the processes (their imports and deployment overlap the caller's own start-up)."""
        # spawn, not fork: the front already runs gRPC and moto threads, which a forked child would inherit broken.
        context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(context, self._root) for _ in range(self._count)]

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        for worker in self._workers:
            if not worker.connection.poll(timeout_s):
                self.stop()
                raise TimeoutError(f"a query worker did not start within {timeout_s:.0f} s")
            worker.connection.recv()  # ("ready", pid)
            worker.reader = threading.Thread(target=self._read, args=(worker,), daemon=True, name="worker-reader")
            worker.reader.start()

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def _read(self, worker: _Worker) -> None:
        while True:
            try:
                request_id, status, body = worker.connection.recv()
            except (EOFError, OSError):
                break
            future = worker.pending.pop(request_id, None)
            if future is not None:
                future.set_result((status, body))
        # The worker is gone: whatever it held will not be answered.
        for future in list(worker.pending.values()):
            future.set_exception(WorkersUnavailable("query worker exited"))
        worker.pending.clear()

    def execute(self, execution_input: dict[str, Any], timeout_s: float = 60.0) -> tuple[int, dict[str, Any]]:
        with self._lock:
            # A worker that died (its reader saw the pipe close) gets nothing more; the others carry on.
            alive = [w for w in self._workers if w.reader is not None and w.reader.is_alive()]
            if not alive:
                raise WorkersUnavailable("no query worker is running")
            worker = min(alive, key=lambda w: len(w.pending))
            request_id = next(self._ids)
            future: Future[tuple[int, dict[str, Any]]] = Future()
            worker.pending[request_id] = future
        with worker.send_lock:
            worker.connection.send((request_id, json.dumps(execution_input)))
        return future.result(timeout_s)

    def stop(self, grace_s: float = 10.0) -> None:
        for worker in self._workers:
            try:
                with worker.send_lock:
                    worker.connection.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(grace_s)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self._workers = []
