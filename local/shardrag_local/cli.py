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

    runtime = LocalRuntime(aws_endpoint=Endpoint(port=args.aws_port))
    runtime.start()
    if not args.no_sample:
        chunks = runtime.ensure_sample_corpus()
        if chunks:
            print(f"indexed the sample corpus: {chunks} chunks", flush=True)
    server = ApiServer(runtime, host=args.host, port=args.port)
    stop = threading.Event()

    def _shutdown(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _shutdown)
    signal.signal(signal.SIGTERM, _shutdown)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(
        f"ShardRAG local runtime: API http://{args.host}:{args.port} (POST /query, GET /openapi.json), "
        f"AWS endpoint http://127.0.0.1:{args.aws_port}, data in {runtime.data_dir}. Ctrl-C stops.",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardrag", description="ShardRAG local runtime and client")
    parser.add_argument("--api", default=DEFAULT_API, help="API base URL (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the local runtime (what `make dev` runs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--aws-port", type=int, default=4566)
    serve.add_argument("--no-sample", action="store_true", help="do not index the sample corpus")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
