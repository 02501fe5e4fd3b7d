"""A Lambda runtime loop that streams: Python's managed runtime has no response streaming, so the answer
function's exec wrapper (``bootstrap``) starts this loop instead of the runtime's own, on the same interpreter.

It speaks the Runtime API: ``GET /runtime/invocation/next``, then the response ``POST`` with
``Lambda-Runtime-Function-Response-Mode: streaming`` and chunked transfer encoding, each write flushed as a chunk;
a failure mid-stream is reported in the ``Lambda-Runtime-Function-Error-Type`` / ``-Body`` trailers.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

API_VERSION = "2018-06-01"


class Invocation:
    def __init__(self, api: str, request_id: str, event: dict[str, Any], deadline_ms: int) -> None:
        self.api = api
        self.request_id = request_id
        self.event = event
        self.deadline_ms = deadline_ms


def next_invocation(api: str) -> Invocation:
    connection = http.client.HTTPConnection(api, timeout=None)
    connection.request("GET", f"/{API_VERSION}/runtime/invocation/next")
    response = connection.getresponse()
    body = response.read()
    request_id = response.getheader("Lambda-Runtime-Aws-Request-Id", "")
    deadline = int(response.getheader("Lambda-Runtime-Deadline-Ms", "0") or 0)
    connection.close()
    return Invocation(api, request_id, json.loads(body or b"{}"), deadline)


def stream_response(invocation: Invocation, produce: Callable[[Callable[[bytes], None]], None]) -> None:
    """POST the response as it is produced: one HTTP chunk per write, error trailers on a failure."""
    connection = http.client.HTTPConnection(invocation.api, timeout=None)
    connection.putrequest("POST", f"/{API_VERSION}/runtime/invocation/{invocation.request_id}/response")
    connection.putheader("Lambda-Runtime-Function-Response-Mode", "streaming")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Trailer", "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body")
    connection.endheaders()

    def write(data: bytes) -> None:
        if data:
            connection.send(b"%x\r\n%s\r\n" % (len(data), data))

    trailers = b""
    try:
        produce(write)
    except Exception as exc:  # the stream is already open: the error travels in the trailers
        traceback.print_exc()
        body = json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)[:1000]})
        trailers = (
            f"Lambda-Runtime-Function-Error-Type: {type(exc).__name__}\r\n"
            f"Lambda-Runtime-Function-Error-Body: {base64.b64encode(body.encode()).decode()}\r\n"
        ).encode()
    connection.send(b"0\r\n" + trailers + b"\r\n")
    connection.getresponse().read()
    connection.close()


def init_error(api: str, exc: BaseException) -> None:
    connection = http.client.HTTPConnection(api)
    body = json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc)[:1000]})
    connection.request("POST", f"/{API_VERSION}/runtime/init/error", body, {"Content-Type": "application/json"})
    connection.getresponse().read()


def serve(api: str, handle: Callable[[dict[str, Any]], Any], *, once: bool = False) -> None:
    """Answer invocations forever (``once``: one, for tests): ``handle`` returns an ``HttpResponse``."""
    while True:
        invocation = next_invocation(api)
        stream_response(invocation, lambda write, inv=invocation: handle(inv.event).write_to(write))  # type: ignore[misc]
        if once:
            return


def main() -> None:
    api = os.environ["AWS_LAMBDA_RUNTIME_API"]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import handler  # type: ignore[import-not-found]  # the function's cold start
    except Exception as exc:
        init_error(api, exc)
        raise
    serve(api, lambda event: handler.handler(event, None))


if __name__ == "__main__":
    main()
