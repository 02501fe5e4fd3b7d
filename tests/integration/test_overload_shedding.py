"""Overload is shed, not failed, through the real path: the local API's admission bound, moto's engine running
``statemachines/query.asl.json``, the real handlers and the shard processes.

Shard behaviour is injected by swapping one shard's store for a wrapper (busy, down, or held until released), so
the tests need no load and assert no timing.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from shardrag.records import Hit, SearchRequest
from shardrag.store.wrapper import StoreWrapper

pytestmark = pytest.mark.integration

QUERY = {"question": "What causes ocean tides?", "top_k": 3}


def _post(url: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        url + "/query", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


class _Deadline(grpc.RpcError):
    """What pymilvus raises when a reachable Milvus misses the call's deadline."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED


class _Failing(StoreWrapper):
    def __init__(self, inner: Any, error: Exception) -> None:
        super().__init__(inner)
        self.error = error

    def search(self, request: SearchRequest) -> list[Hit]:
        raise self.error

    search_lexical = search


class _Held(StoreWrapper):
    """Searches wait until released: a query held in flight for as long as a test needs."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()

    def search(self, request: SearchRequest) -> list[Hit]:
        self.entered.set()
        self.release.wait(60)
        return super().search(request)


@contextmanager
def _shard_store(shard: int, make: Any) -> Iterator[Any]:
    from shardrag import services

    stores = services.shard_stores()
    original = stores(shard)
    replacement = make(original)
    stores._stores[shard] = replacement  # the handlers' own store factory, as a Lambda container holds it
    try:
        yield replacement
    finally:
        stores._stores[shard] = original


@pytest.fixture
def api_with_one_slot(local_runtime: Any) -> Iterator[str]:
    from shardrag_local.api_server import ApiServer

    server = ApiServer(local_runtime, port=0, max_concurrency=1)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_past_the_configured_concurrency_the_api_answers_429_with_retry_after(api_with_one_slot: str) -> None:
    with _shard_store(0, _Held) as held:
        first: list[Any] = []
        in_flight = threading.Thread(target=lambda: first.append(_post(api_with_one_slot, QUERY)))
        in_flight.start()
        assert held.entered.wait(60), "the first query never reached the shard"

        status, body, headers = _post(api_with_one_slot, QUERY)

        held.release.set()
        in_flight.join(60)
    assert status == 429
    assert body["error"]["code"] == "too_many_requests"
    assert int(headers["Retry-After"]) >= 1
    # The admitted query was not harmed by the one shed beside it.
    assert first[0][0] == 200 and first[0][1]["degraded"] is False
    # And the slot is free again.
    assert _post(api_with_one_slot, QUERY)[0] == 200


def test_a_saturated_shard_sheds_the_request_instead_of_degrading_the_answer(api_url: str) -> None:
    with _shard_store(1, lambda inner: _Failing(inner, _Deadline())):
        status, body, headers = _post(api_url, QUERY)
    assert status == 429, body
    assert body["error"]["code"] == "too_many_requests"
    assert "Retry-After" in headers


def test_a_shard_that_is_down_still_degrades_the_answer(api_url: str) -> None:
    with _shard_store(1, lambda inner: _Failing(inner, ConnectionRefusedError("connection refused"))):
        status, body, _ = _post(api_url, QUERY)
    assert status == 200
    assert body["degraded"] is True and body["shards"]["failed"] == [1]
