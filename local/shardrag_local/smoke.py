"""Smoke test of a running ShardRAG: a deployed stack (``make smoke ENV=dev``) or the local runtime (``--local``).

One sequence, whatever the target, each step a check that stops the run with what it saw:

1. ``GET /health`` answers 200 ``{"status": "ok"}``.
2. A question gets a 200 answer with citations.
3. Malformed input gets a 400 ``bad_request`` error body.
4. A document uploaded to the documents bucket (a unique made-up fact) becomes answerable, cited by its source;
   deleted, it is gone from the answers. Through the real bucket and the real ingestion path.
5. The store stopped, a query is a 503 ``shards_unavailable``; started again, a 200 (``--outage``; always run
   locally, where stopping the shards costs nothing; on AWS the ``standalone`` host is stopped and started, minutes).

Requests to a deployed API are signed as its ``deployment.api.auth`` requires: SigV4 (``iam``), the ID token in
``SHARDRAG_ID_TOKEN`` (``cognito``) or the key in ``SHARDRAG_API_KEY`` (``api_key``).

    python -m shardrag_local.smoke --env dev [--outage]
    python -m shardrag_local.smoke --local [--api http://127.0.0.1:8080] [--aws-endpoint http://127.0.0.1:4566]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: How long an upload or a delete may take to show in the answers (the ingest queue's batching plus a cold start).
PROPAGATION_S = 300.0
POLL_S = 5.0


class SmokeFailure(Exception):
    """A check did not hold; the message says which and what was seen."""


@dataclass
class Target:
    """Where the smoke test sends its requests and uploads, and how it stops and starts the store."""

    api: str
    bucket: str
    s3: Any
    sign: Callable[[urllib.request.Request], None] = lambda request: None
    #: Context manager that takes the whole store down while it is active; None when the target cannot.
    outage: Callable[[], contextlib.AbstractContextManager[None]] | None = None
    log: Callable[[str], None] = field(default=lambda line: print(line, flush=True))

    def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 60.0) -> tuple[int, Any]:
        headers = {"content-type": "application/json"} if body is not None else {}
        request = urllib.request.Request(self.api + path, data=body, method=method, headers=headers)
        self.sign(request)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw or b"null")
            except json.JSONDecodeError:
                return exc.code, raw.decode(errors="replace")

    def ask(self, question: str) -> tuple[int, Any]:
        return self.call("POST", "/query", json.dumps({"question": question, "top_k": 5}).encode())


def _check(condition: bool, what: str, seen: Any) -> None:
    if not condition:
        raise SmokeFailure(f"{what}; saw {json.dumps(seen)[:600] if not isinstance(seen, str) else seen[:600]}")


def _cites(body: Any, source: str) -> bool:
    return isinstance(body, dict) and any(c.get("source") == source for c in body.get("citations") or [])


def _wait_for(target: Target, question: str, source: str, *, present: bool, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status, body = target.ask(question)
        if status == 200 and _cites(body, source) is present:
            return body
        if time.monotonic() > deadline:
            state = "cited" if present else "gone"
            raise SmokeFailure(f"{source} not {state} after {timeout:.0f} s; last answer {status} {str(body)[:400]}")
        time.sleep(POLL_S)


def run(target: Target, *, question: str, outage: bool, propagation_s: float = PROPAGATION_S) -> None:
    """Run every check against ``target``; raise :class:`SmokeFailure` at the first that does not hold."""
    status, body = target.call("GET", "/health")
    _check(status == 200 and isinstance(body, dict) and body.get("status") == "ok", "GET /health not ok", body)
    target.log("ok   health")

    status, body = target.ask(question)
    _check(status == 200 and bool(body.get("citations")) and bool(body.get("answer")), "no cited answer", body)
    target.log(f"ok   cited answer ({len(body['citations'])} citations)")

    status, body = target.call("POST", "/query", json.dumps({"question": ""}).encode())
    _check(status == 400 and (body or {}).get("error", {}).get("code") == "bad_request", "empty question not 400", body)
    status, body = target.call("POST", "/query", b"{not json")
    _check(status == 400, "malformed JSON not 400", body)
    target.log("ok   400 for bad input")

    tag = uuid.uuid4().hex[:10]
    key = f"smoke/zorblat-{tag}.txt"
    source = f"s3://{target.bucket}/{key}"
    fact = f"The smoke-test heron Zorblat{tag} nests only on the glass cliffs of Quillmoor."
    probe = f"Where does the heron Zorblat{tag} nest?"
    target.s3.put_object(Bucket=target.bucket, Key=key, Body=fact.encode(), ContentType="text/plain")
    try:
        _wait_for(target, probe, source, present=True, timeout=propagation_s)
        target.log(f"ok   upload answerable ({source})")
    finally:
        target.s3.delete_object(Bucket=target.bucket, Key=key)
    _wait_for(target, probe, source, present=False, timeout=propagation_s)
    target.log("ok   delete removed it from the answers")

    if not outage:
        target.log("skip 503 -> 200 recovery (--outage to stop and start the store)")
        return
    if target.outage is None:
        target.log("skip 503 -> 200 recovery (this store kind is not stopped by the smoke test)")
        return
    with target.outage():
        status, body = target.ask(question)
        _check(status == 503 and body.get("error", {}).get("code") == "shards_unavailable", "store down, not 503", body)
        target.log("ok   503 shards_unavailable with the store stopped")
    deadline = time.monotonic() + propagation_s * 2
    while True:
        status, body = target.ask(question)
        if status == 200:
            break
        if time.monotonic() > deadline:
            raise SmokeFailure(f"no 200 after the store restarted; last {status} {str(body)[:300]}")
        time.sleep(POLL_S)
    target.log("ok   200 again after the store restarted")


# --- targets ----------------------------------------------------------------------------------------------------


def local_target(api: str, aws_endpoint: str, *, bucket: str = "shardrag-documents") -> Target:
    """The local runtime: its HTTP API, its emulated S3, and its /admin shard switches."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=aws_endpoint, region_name="us-east-1")
    target = Target(api=api.rstrip("/"), bucket=bucket, s3=s3)

    @contextlib.contextmanager
    def all_shards_down() -> Iterator[None]:
        status, shards = target.call("GET", "/admin/shards")
        _check(status == 200, "GET /admin/shards failed", shards)
        numbers = [s["shard"] for s in shards]
        for shard in numbers:
            target.call("POST", f"/admin/shards/{shard}/stop")
        try:
            yield
        finally:
            for shard in numbers:
                target.call("POST", f"/admin/shards/{shard}/start")

    target.outage = all_shards_down
    return target


def deployed_target(env: str, *, config_file: str = "cdk.json") -> Target:
    """The stack ``ShardRag-<env>``: its outputs name the API and the bucket; cdk.json says how to authenticate."""
    import boto3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    environment = json.loads(Path(config_file).read_text())["context"]["environments"][env]
    deployment = environment.get("deployment", {})
    session = boto3.Session(region_name=environment.get("region"))
    credentials = session.get_credentials()
    if credentials is None:
        raise SmokeFailure("no AWS credentials (aws sts get-caller-identity must work)")
    stack = session.client("cloudformation").describe_stacks(StackName=f"ShardRag-{env}")["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    api = outputs["ApiUrl"].removesuffix("/query")
    auth = deployment.get("api", {}).get("auth", "iam")

    def sign(request: urllib.request.Request) -> None:
        if auth == "iam":
            signed = AWSRequest(method=request.get_method(), url=request.full_url, data=request.data,
                                headers=dict(request.header_items()))  # fmt: skip
            SigV4Auth(credentials, "execute-api", session.region_name).add_auth(signed)
            for name, value in signed.headers.items():
                request.add_header(name, value)
        elif auth == "cognito":
            request.add_header("Authorization", os.environ["SHARDRAG_ID_TOKEN"])
        else:
            request.add_header("x-api-key", os.environ["SHARDRAG_API_KEY"])

    target = Target(api=api, bucket=outputs["DocumentsBucket"], s3=session.client("s3"), sign=sign)
    instance = outputs.get("MilvusInstance")
    if instance:
        ec2 = session.client("ec2")

        @contextlib.contextmanager
        def host_stopped() -> Iterator[None]:
            ec2.stop_instances(InstanceIds=[instance])
            ec2.get_waiter("instance_stopped").wait(InstanceIds=[instance])
            try:
                yield
            finally:
                ec2.start_instances(InstanceIds=[instance])
                ec2.get_waiter("instance_running").wait(InstanceIds=[instance])

        target.outage = host_stopped
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--env", help="a deployed environment of cdk.json (stack ShardRag-<env>)")
    where.add_argument("--local", action="store_true", help="the local runtime (make dev)")
    parser.add_argument("--api", default=os.environ.get("SHARDRAG_API", "http://127.0.0.1:8080"))
    parser.add_argument("--aws-endpoint", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566"))
    parser.add_argument("--outage", action="store_true", help="also stop and restart the store (always on --local)")
    parser.add_argument("--question", default="What causes ocean tides?", help="a question the corpus answers")
    parser.add_argument("--timeout", type=float, default=PROPAGATION_S, help="seconds for an upload/delete to show")
    args = parser.parse_args(argv)
    try:
        target = local_target(args.api, args.aws_endpoint) if args.local else deployed_target(args.env)
        run(target, question=args.question, outage=args.outage or args.local, propagation_s=args.timeout)
    except SmokeFailure as failure:
        print(f"FAIL {failure}", file=sys.stderr)
        return 1
    print("smoke ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
