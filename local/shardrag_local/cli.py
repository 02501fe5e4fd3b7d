"""``shardrag``: run the local runtime and talk to its API."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

DEFAULT_API = os.environ.get("SHARDRAG_API", "http://127.0.0.1:8080")
#: Overrides the default number of query worker processes (one per core).
QUERY_WORKERS_ENV = "SHARDRAG_QUERY_WORKERS"


def _call(
    api: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 120
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(api + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except urllib.error.URLError as exc:
        raise SystemExit(f"cannot reach the ShardRAG API at {api} ({exc.reason}); start it with `make dev`") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from shardrag_local.api_server import ApiServer
    from shardrag_local.emulator import Endpoint
    from shardrag_local.runtime import LocalRuntime

    workers = args.query_workers if args.query_workers is not None else int(os.environ.get(QUERY_WORKERS_ENV, 0) or 0)
    runtime = LocalRuntime(aws_endpoint=Endpoint(port=args.aws_port), query_workers=workers or (os.cpu_count() or 1))
    runtime.start()
    if not args.no_sample:
        chunks = runtime.ensure_sample_corpus()
        if chunks:
            print(f"indexed the sample corpus: {chunks} chunks", flush=True)
    server = ApiServer(runtime, host=args.host, port=args.port, max_concurrency=args.max_concurrency)
    stop = threading.Event()

    def _shutdown(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _shutdown)
    signal.signal(signal.SIGTERM, _shutdown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(
        f"ShardRAG local runtime: chat page http://{args.host}:{args.port}/ (POST /chat streams), "
        f"API POST /query, GET /openapi.json, "
        f"AWS endpoint http://127.0.0.1:{args.aws_port}, data in {runtime.data_dir}, "
        f"at most {server.admission.limit} queries in flight. Ctrl-C stops.",
        flush=True,
    )
    stop.wait()
    print("stopping…", flush=True)
    server.shutdown()
    server.server_close()
    runtime.stop()
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"question": args.question, "generate": not args.no_generate}
    if args.top_k is not None:
        body["top_k"] = args.top_k
    status, response = _call(args.api, "POST", "/query", body)
    if args.json or status != 200:
        print(json.dumps(response, indent=2))
        return 0 if status == 200 else 1
    if response.get("answer"):
        print(response["answer"], end="\n\n")
    for citation in response.get("citations", []):
        print(f"[{citation['ref']}] {citation['source']} ({citation['score']:.3f})")
    if not response.get("answer"):
        for hit in response.get("hits", []):
            print(f"{hit['rank']:>3}. {hit['score']:.3f} {hit['doc_id']} — {hit['text'][:100]!r}")
    if response.get("degraded"):
        print(f"\n(degraded: shards {response['shards']['failed']} did not answer)")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    if args.action == "status":
        status, response = _call(args.api, "GET", "/admin/shards")
    else:
        status, response = _call(args.api, "POST", f"/admin/shards/{args.shard}/{args.action}")
    print(json.dumps(response, indent=2))
    return 0 if status == 200 else 1


def cmd_rebalance(args: argparse.Namespace) -> int:
    """Retrain the routing centroids and move the chunks (routing.mode centroid); the runtime keeps answering."""
    if args.direct:
        return _rebalance_direct()
    status, response = _call(args.api, "POST", "/admin/rebalance", {}, timeout=args.timeout)
    print(json.dumps(response, indent=2))
    return 0 if status == 200 else 1


def cmd_term_stats(args: argparse.Namespace) -> int:
    """Recount the BM25 term statistics from the shards' rows (after a crash, or for an index copied in)."""
    if args.direct:
        from shardrag import services
        from shardrag.term_stats import rebuild_term_stats

        counted = rebuild_term_stats(
            services.shard_stores(),
            services.term_stats_store(),
            per_tenant=services.stats_per_tenant(),
            journal=services.stats_journal(),
        )
        print(json.dumps({"chunks_per_shard": {str(k): v for k, v in counted.items()}}, indent=2))
        return 0
    status, response = _call(args.api, "POST", "/admin/term-stats/rebuild", {}, timeout=args.timeout)
    print(json.dumps(response, indent=2))
    return 0 if status == 200 else 1


def _rebalance_direct() -> int:
    """Rebalance a deployed index from this machine (a bastion or a build job inside the VPC): the shards, the
    registry table and the artefacts bucket come from the environment's settings, as the functions see them
    (``SHARDRAG_SETTINGS``, ``SHARDRAG_REGISTRY_TABLE``, ``SHARDRAG_ARTIFACTS_BUCKET``). Routers pick up the new
    centroids within ``routing.centroid.refresh_s``; the rebalancer waits that long before deleting old copies.
    With the answer cache on, ``SHARDRAG_ANSWER_CACHE_TABLE`` names its table: the rebalance advances the index
    version there."""
    import boto3
    from shardrag import env, services
    from shardrag.config import cached_settings
    from shardrag.ingestion.registry import DynamoDbRegistry
    from shardrag.rebalance import Rebalancer

    settings = cached_settings()
    if settings.routing.mode != "centroid":
        print("rebalance needs routing.mode centroid (hash placement has nothing to rebalance)", file=sys.stderr)
        return 2
    table = os.environ.get(env.REGISTRY_TABLE, services.DEFAULT_REGISTRY_TABLE)
    report = Rebalancer(
        stores=services.shard_stores(),
        shard_count=settings.store.shard_count,
        centroids=services.centroid_cache().store,
        settings=settings.routing.centroid,
        registry=DynamoDbRegistry(boto3.client("dynamodb"), table),
        on_change=services.index_changed,
    ).run()
    print(json.dumps(report.model_dump(), indent=2))
    return 0


def _aws(endpoint: str, service: str, read_timeout: float = 300) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        config=Config(read_timeout=read_timeout, retries={"max_attempts": 2}),
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    """Upload files (directories recursively) to the documents bucket: the S3 event path indexes them."""
    import time
    from pathlib import Path

    from shardrag.ingestion.registry import DynamoDbRegistry

    s3 = _aws(args.endpoint, "s3")
    uploads: list[tuple[Path, str]] = []
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
            uploads += [(f, args.prefix + f.relative_to(path).as_posix()) for f in files]
        elif path.is_file():
            uploads.append((path, args.prefix + path.name))
        else:
            raise SystemExit(f"no such file or directory: {raw}")
    etags = {}
    for path, key in uploads:
        with path.open("rb") as body:
            etags[key] = s3.put_object(Bucket=args.bucket, Key=key, Body=body)["ETag"].strip('"')
        print(f"uploaded s3://{args.bucket}/{key}", flush=True)
    if not args.wait:
        return 0
    registry = DynamoDbRegistry(_aws(args.endpoint, "dynamodb"), args.table)
    deadline = time.monotonic() + args.wait
    pending = dict(etags)
    while pending and time.monotonic() < deadline:
        for key, etag in list(pending.items()):
            state = registry.get_source(f"{args.bucket}/{key}")
            if state is not None and state.status in ("indexed", "failed") and state.etag == etag:
                detail = f"{state.doc_count} documents, {state.chunk_count} chunks"
                if state.status == "failed":
                    detail = f"{state.reason}: {state.error}"
                print(f"{state.status:8} {key} ({detail})", flush=True)
                del pending[key]
        time.sleep(0.5)
    for key in pending:
        print(f"pending  {key}")
    return 1 if pending else 0


def cmd_reindex(args: argparse.Namespace) -> int:
    """Compare the bucket listing with the registry and enqueue repairs for every difference."""
    from shardrag.ingestion.events import notification
    from shardrag.ingestion.reconcile import Reconciler
    from shardrag.ingestion.registry import DynamoDbRegistry
    from shardrag.ingestion.source import S3ObjectSource

    sqs = _aws(args.endpoint, "sqs")
    queue_url = sqs.get_queue_url(QueueName=args.queue)["QueueUrl"]

    def send(events: Any) -> None:
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(notification(list(events))))

    registry = DynamoDbRegistry(_aws(args.endpoint, "dynamodb"), args.table)
    report = Reconciler(S3ObjectSource(_aws(args.endpoint, "s3")), registry, send).run(
        args.bucket, prefix=args.prefix, retry_failed=args.retry_failed
    )
    print(json.dumps(report.model_dump(), indent=2))
    print(f"{report.repairs} repairs enqueued", flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from shardrag_local.evaluation.cli import run

    argv = sys.argv[sys.argv.index("eval") + 1 :] if "eval" in sys.argv else []
    return run(args, argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardrag", description="ShardRAG local runtime and client")
    parser.add_argument("--api", default=DEFAULT_API, help="API base URL (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the local runtime (what `make dev` runs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--aws-port", type=int, default=4566)
    serve.add_argument("--no-sample", action="store_true", help="do not index the sample corpus")
    serve.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="queries in flight before POST /query answers 429 + Retry-After "
        "(default: $SHARDRAG_MAX_CONCURRENCY, else 4 per core)",
    )
    serve.add_argument(
        "--query-workers",
        type=int,
        default=None,
        help="processes that run query executions (default: $SHARDRAG_QUERY_WORKERS, else one per core)",
    )
    serve.set_defaults(func=cmd_serve)

    ask = sub.add_parser("ask", help="ask a question")
    ask.add_argument("question")
    ask.add_argument("--top-k", type=int)
    ask.add_argument("--no-generate", action="store_true", help="ranked hits only")
    ask.add_argument("--json", action="store_true", help="print the raw response")
    ask.set_defaults(func=cmd_ask)

    shard = sub.add_parser("shard", help="local shard operations (stop one to see a degraded answer)")
    shard.add_argument("action", choices=["status", "stop", "start"])
    shard.add_argument("shard", type=int, nargs="?", default=0)
    shard.set_defaults(func=cmd_shard)

    rebalance = sub.add_parser(
        "rebalance", help="retrain the centroids and move chunks to their new shards (routing.mode centroid)"
    )
    stats = sub.add_parser(
        "rebuild-term-stats",
        help="recount the BM25 term statistics from what the shards store (pause ingestion while it runs)",
    )
    # Index maintenance: through the running local runtime (it owns the Milvus Lite files), or --direct.
    for command, func in ((rebalance, cmd_rebalance), (stats, cmd_term_stats)):
        command.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the runtime")
        command.add_argument(
            "--direct",
            action="store_true",
            help="run here against the configured shards, registry and artefacts (a deployed index), "
            "not via the local API",
        )
        command.set_defaults(func=func)

    aws_endpoint = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    ingest = sub.add_parser("ingest", help="upload files to the documents bucket (the S3 event path indexes them)")
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.add_argument("--prefix", default="", help="key prefix for the uploads")
    ingest.add_argument("--wait", type=float, default=120.0, help="seconds to wait for indexing (0: do not wait)")
    reindex = sub.add_parser("reindex", help="reconcile the bucket with the document registry (repairs drift)")
    reindex.add_argument("--prefix", default="", help="only keys under this prefix")
    reindex.add_argument("--retry-failed", action="store_true", help="also retry objects recorded as failed")
    reindex.add_argument("--queue", default="shardrag-ingest", help="ingest queue name (default: %(default)s)")
    for command in (ingest, reindex):
        command.add_argument("--endpoint", default=aws_endpoint, help="AWS endpoint (default: %(default)s)")
        command.add_argument("--bucket", default="shardrag-documents")
        command.add_argument("--table", default="shardrag-registry", help="registry table")
    ingest.set_defaults(func=cmd_ingest)
    reindex.set_defaults(func=cmd_reindex)

    from shardrag_local.evaluation.cli import add_arguments as add_eval_arguments

    evaluate = sub.add_parser(
        "eval", help="retrieval quality + latency on a BEIR folder through a fresh runtime, with baselines"
    )
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
