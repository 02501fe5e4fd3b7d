"""Load benchmark of the local runtime as ``make dev`` serves it: closed-loop clients over loopback against
``POST /query`` on the SciFact index (4 hash shards), plus the two faults a long run meets.

Runs, each on a fresh copy of the same prepared index and a freshly started ``shardrag serve`` process:

- ``clients-N``: N clients send ``POST /query`` back to back for ``--seconds`` (``top_k`` 5, generation on,
  questions drawn from the SciFact queries); a client told 429 waits its ``Retry-After`` (at most 5 s), as
  ``../shared/acceptance/load_test.py`` does.
- ``shard-stop``: the most clients, with one shard stopped for the middle third of the run; answers are counted
  by phase (every shard up before, down, every shard up again after).
- ``ingest``: the most clients, with a small document uploaded through the local S3 endpoint every 2 s; after the
  run, every upload must be answerable.

``--baseline COMMIT`` runs the client table again with the runtime of another commit (extracted with
``git archive``, same index, same model, same interpreter), in the same window, so that the ratio is fair.
Prints one JSON line; ``python -m bench.run load`` keeps it in ``bench/results/load.json``.

Usage::

    python -m bench.load [--clients 1,8,50] [--seconds 60] [--baseline e09a5fc] [--index build/bench/scifact-4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "scifact"
SHARDS = 4
#: A client told 429 waits Retry-After, at most this long (the acceptance client's rule).
MAX_RETRY_AFTER_S = 5.0


# -- the index -----------------------------------------------------------------------------------------------
def build_index(path: Path, corpus: Path) -> None:
    """Index ``corpus`` through the real S3 -> SQS -> ingest path into a fresh data directory (~4 min on 2 cores),
    in a child process so that this one stays a plain HTTP client."""
    code = f"""
import json, os
os.environ["SHARDRAG_DATA_DIR"] = {str(path)!r}
os.environ["SHARDRAG_SETTINGS"] = json.dumps({{"store": {{"shard_count": {SHARDS}}}}})
os.environ.setdefault("SHARDRAG_MODEL_DIR", {str(ROOT / "build" / "model")!r})
from pathlib import Path
from shardrag_local.runtime import DOCUMENTS_BUCKET, LocalRuntime
runtime = LocalRuntime(serve_aws=False)
runtime.start()
try:
    runtime.aws.client("s3").put_object(Bucket=DOCUMENTS_BUCKET, Key="scifact/corpus.jsonl",
                                        Body=Path({str(corpus)!r}).read_bytes())
    assert runtime.ingestion.wait_idle(7200), "ingestion did not finish"
finally:
    runtime.stop()
"""
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    subprocess.run([sys.executable, "-c", code.replace(repr(str(path)), repr(str(staging)))], check=True, cwd=ROOT)
    staging.rename(path)


# -- a runtime under test ------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def extract_commit(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (its runtime and handlers), without touching this checkout."""
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as buffer:
        buffer.write(archive)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as tar:
            tar.extractall(into, filter="data")
    return into


@dataclass
class Server:
    """``shardrag serve`` from ``checkout`` on a copy of ``index``."""

    checkout: Path
    index: Path
    api_port: int = field(default_factory=_free_port)
    aws_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    data: Path | None = None
    _log: IO[bytes] | None = None

    def __enter__(self) -> Server:
        self.data = Path(tempfile.mkdtemp(prefix="shardrag-load-"))
        shutil.copytree(self.index, self.data, dirs_exist_ok=True)
        env = {
            **os.environ,
            "SHARDRAG_DATA_DIR": str(self.data),
            "SHARDRAG_SETTINGS": json.dumps({"store": {"shard_count": SHARDS}}),
            "SHARDRAG_MODEL_DIR": str(ROOT / "build" / "model"),
            # The checkout's own packages first: this interpreter's editable install points at this checkout.
            "PYTHONPATH": os.pathsep.join(str(self.checkout / p) for p in ("layers/core/python", "local", ".")),
        }
        self._log = (self.data / "serve.log").open("wb")
        command = [sys.executable, "-m", "shardrag_local.cli", "serve", "--no-sample"]
        command += ["--port", str(self.api_port), "--aws-port", str(self.aws_port)]
        self.process = subprocess.Popen(
            command,
            cwd=self.checkout,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runtime from {self.checkout} did not start; see {self.data / 'serve.log'}")
            time.sleep(0.5)
        return self

    def _healthy(self) -> bool:
        try:
            return self.request("GET", "/health", timeout=2)[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: Any = None, timeout: float = 120) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=timeout)
        try:
            payload = json.dumps(body) if body is not None else None
            connection.request(method, path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            connection.close()

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # what Ctrl-C sends: a clean stop of every process
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
        if self.data is not None:
            shutil.rmtree(self.data, ignore_errors=True)


# -- closed-loop load ----------------------------------------------------------------------------------------
@dataclass
class Sample:
    sent: float
    done: float
    status: int | str
    degraded: bool = False


def run_clients(
    port: int, questions: list[str], clients: int, seconds: float, *, during: Callable[[float], None] | None = None
) -> tuple[list[Sample], float, float]:
    """``clients`` closed-loop clients for ``seconds``; returns every sample, the start time and the wall time.
    ``during(t0)`` runs beside them (faults, uploads)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at = t0 + seconds

    def client(i: int) -> None:
        rnd = random.Random(i)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.monotonic() < stop_at:
            body = json.dumps({"question": rnd.choice(questions), "top_k": 5, "generate": True})
            sent = time.monotonic()
            degraded, wait = False, 0.0
            status: int | str
            try:
                connection.request("POST", "/query", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
                status = response.status
                if status == 429:
                    wait = min(MAX_RETRY_AFTER_S, float(response.getheader("Retry-After") or 1))
                elif status == 200:
                    degraded = bool(json.loads(data).get("degraded"))
            except Exception as exc:  # a reset or a timeout is a result too, counted by its name
                status = type(exc).__name__
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                samples.append(Sample(sent, time.monotonic(), status, degraded))
            if wait:
                time.sleep(wait)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if during is not None:
        threads.append(threading.Thread(target=during, args=(t0,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, t0, time.monotonic() - t0


def summarise(samples: list[Sample], wall: float) -> dict[str, Any]:
    ok = sorted((s.done - s.sent) * 1000 for s in samples if s.status == 200)
    codes: dict[str, int] = {}
    for s in samples:
        codes[str(s.status)] = codes.get(str(s.status), 0) + 1

    def q(p: float) -> float:
        return round(ok[min(len(ok) - 1, int(p * len(ok)))], 1) if ok else float("nan")

    p50, p95 = q(0.50), q(0.95)
    return {
        "requests": len(samples),
        "codes": codes,
        "ok_per_s": round(len(ok) / wall, 2),
        "requests_per_s": round(len(samples) / wall, 2),
        "degraded": sum(s.degraded for s in samples),
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": q(0.99),
        "p95_over_p50": round(p95 / p50, 2) if ok else None,
        "mean_ms": round(statistics.fmean(ok), 1) if ok else None,
    }


def _load() -> dict[str, float]:
    one, five, _ = os.getloadavg()
    return {"load_1m": round(one, 2), "load_5m": round(five, 2)}


def measure(server: Server, questions: list[str], clients: int, seconds: float, **kw: Any) -> dict[str, Any]:
    before = _load()
    samples, _, wall = run_clients(server.api_port, questions, clients, seconds, **kw)
    return {"clients": clients, "seconds": seconds, **summarise(samples, wall), "before": before, "after": _load()}


def warm_up(server: Server, questions: list[str]) -> None:
    # Cold starts (model load, first connection to every shard) are not throughput.
    for question in questions[:10]:
        server.request("POST", "/query", {"question": question, "top_k": 5, "generate": True})


def client_table(server: Server, questions: list[str], counts: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for clients in counts:
        row = measure(server, questions, clients, seconds)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def shard_stop(server: Server, questions: list[str], clients: int, seconds: float, shard: int) -> dict[str, Any]:
    marks: dict[str, float] = {}

    def fault(t0: float) -> None:
        time.sleep(seconds / 3)
        marks["stop_sent"] = time.monotonic()
        marks["stop_status"] = server.request("POST", f"/admin/shards/{shard}/stop")[0]
        marks["stopped"] = time.monotonic()
        time.sleep(max(0.0, t0 + 2 * seconds / 3 - time.monotonic()))
        marks["start_sent"] = time.monotonic()
        marks["start_status"] = server.request("POST", f"/admin/shards/{shard}/start")[0]
        marks["started"] = time.monotonic()

    before = _load()
    samples, _, wall = run_clients(server.api_port, questions, clients, seconds, during=fault)
    # Phases by when a request was sent and answered: every shard up (before the stop was asked for, or sent
    # after the restart completed), or the shard down (sent after it was stopped and answered before the restart).
    up_before = [s for s in samples if s.done < marks["stop_sent"]]
    down = [s for s in samples if s.sent >= marks["stopped"] and s.done < marks["start_sent"]]
    up_after = [s for s in samples if s.sent >= marks["started"]]
    phase = {
        name: {
            "codes": summarise(group, wall)["codes"],
            "degraded": sum(s.degraded for s in group),
            "ok": sum(s.status == 200 for s in group),
        }
        for name, group in (("all_up_before", up_before), ("shard_down", down), ("all_up_after", up_after))
    }
    return {
        "clients": clients,
        "seconds": seconds,
        "shard": shard,
        **summarise(samples, wall),
        "phases": phase,
        "admin": {"stop": marks["stop_status"], "start": marks["start_status"]},
        "restart_s": round(marks["started"] - marks["start_sent"], 2),
        "before": before,
        "after": _load(),
    }


def ingest_during(server: Server, questions: list[str], clients: int, seconds: float) -> dict[str, Any]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{server.aws_port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    uploaded: list[str] = []
    upload_ms: list[float] = []

    def uploads(t0: float) -> None:
        while time.monotonic() < t0 + seconds - 2:
            tag = uuid.uuid4().hex[:10]
            body = f"The load marker Vexilor{tag} is a document written while {clients} clients query the index."
            started = time.monotonic()
            s3.put_object(Bucket="shardrag-documents", Key=f"load/{tag}.txt", Body=body.encode())
            upload_ms.append((time.monotonic() - started) * 1000)
            uploaded.append(tag)
            time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))

    before = _load()
    samples, _, wall = run_clients(server.api_port, questions, clients, seconds, during=uploads)
    # Every upload must become answerable; ingestion is asynchronous (S3 -> SQS -> ingest), so give it time.
    deadline = time.monotonic() + 120
    missing = list(uploaded)
    while missing and time.monotonic() < deadline:
        missing = [tag for tag in missing if not _answerable(server, tag)]
        if missing:
            time.sleep(2)
    return {
        "clients": clients,
        "seconds": seconds,
        **summarise(samples, wall),
        "uploaded": len(uploaded),
        "upload_p50_ms": round(statistics.median(upload_ms), 1) if upload_ms else None,
        "missing_after": len(missing),
        "before": before,
        "after": _load(),
    }


def _answerable(server: Server, tag: str) -> bool:
    status, body = server.request("POST", "/query", {"question": f"load marker Vexilor{tag}", "generate": False})
    return status == 200 and any(f"Vexilor{tag}" in hit["text"] for hit in body["hits"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", default="1,8,50", help="client counts of the table")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--index", type=Path, default=ROOT / "build" / "bench" / f"scifact-{SHARDS}")
    parser.add_argument("--dataset", type=Path, default=DATASET)
    parser.add_argument("--baseline", help="also run the client table with the runtime of this commit")
    parser.add_argument("--baseline-clients", help="client counts for the baseline (default: --clients)")
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True, help="shard-stop + ingest")
    parser.add_argument("--shard", type=int, default=2, help="the shard stopped in the middle third")
    args = parser.parse_args()

    if not args.index.exists():
        print(f"building the index at {args.index} (once)", file=sys.stderr, flush=True)
        build_index(args.index, args.dataset / "corpus.jsonl")
    questions = [json.loads(line)["text"] for line in (args.dataset / "queries.jsonl").open()]
    counts = [int(c) for c in args.clients.split(",")]
    most = max(counts)
    result: dict[str, Any] = {"nproc": os.cpu_count(), "shards": SHARDS, "index": str(args.index)}

    with tempfile.TemporaryDirectory(prefix="shardrag-baseline-") as scratch:
        runtimes = [("this", ROOT)]
        if args.baseline:
            runtimes.append((f"baseline {args.baseline}", extract_commit(args.baseline, Path(scratch) / "tree")))
        for name, checkout in runtimes:
            table_counts = counts
            if name != "this" and args.baseline_clients:
                table_counts = [int(c) for c in args.baseline_clients.split(",")]
            with Server(checkout, args.index) as server:
                warm_up(server, questions)
                entry: dict[str, Any] = {"table": client_table(server, questions, table_counts, args.seconds)}
            if name == "this" and args.faults:
                with Server(checkout, args.index) as server:
                    warm_up(server, questions)
                    entry["shard_stop"] = shard_stop(server, questions, most, args.seconds, args.shard)
                    print(json.dumps(entry["shard_stop"]), file=sys.stderr, flush=True)
                with Server(checkout, args.index) as server:
                    warm_up(server, questions)
                    entry["ingest"] = ingest_during(server, questions, most, args.seconds)
                    print(json.dumps(entry["ingest"]), file=sys.stderr, flush=True)
            result[name] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
