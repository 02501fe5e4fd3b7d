"""Overload is shed, not failed: a throttled or saturated shard is told apart from a shard that is down, and the
query workflow turns the first into a 429 and only the second into a degraded answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from shardrag.api_contract import map_execution
from shardrag.config import StoreSettings
from shardrag.errors import ERROR_STATUS, ShardBusy, ShardSearchFailed
from shardrag.records import Hit, SearchRequest
from shardrag.search import ShardSearcher, is_saturation
from shardrag.statemachine import render_definition

ASL = Path(__file__).resolve().parents[2] / "statemachines" / "query.asl.json"


class _RpcError(grpc.RpcError):
    """What a Milvus client raises when a gRPC call ends with a status (pymilvus passes these through)."""

    def __init__(self, status: grpc.StatusCode) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status


class _Store:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.timeouts: list[float | None] = []

    def search(self, request: SearchRequest) -> list[Hit]:
        self.timeouts.append(request.timeout_s)
        if self.error is not None:
            raise self.error
        return []

    search_lexical = search


REQUEST = SearchRequest(vector=[0.1] * 8, top_k=3)


@pytest.mark.parametrize("status", [grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_a_reachable_shard_that_misses_its_deadline_is_busy_not_failed(status: grpc.StatusCode) -> None:
    searcher = ShardSearcher(lambda _: _Store(_RpcError(status)), 2, timeout_s=5.0)  # type: ignore[arg-type,return-value]

    with pytest.raises(ShardBusy):
        searcher.run(1, REQUEST)


@pytest.mark.parametrize(
    "error", [_RpcError(grpc.StatusCode.UNAVAILABLE), ConnectionRefusedError("refused"), RuntimeError("boom")]
)
def test_a_shard_that_cannot_answer_is_failed(error: Exception) -> None:
    searcher = ShardSearcher(lambda _: _Store(error), 2, timeout_s=5.0)  # type: ignore[arg-type,return-value]

    with pytest.raises(ShardSearchFailed):
        searcher.run(0, REQUEST)
    assert not is_saturation(error)


def test_both_searches_of_a_shard_share_one_deadline() -> None:
    store = _Store()
    ShardSearcher(lambda _: store, 1, timeout_s=5.0).run(0, REQUEST, dense=True, lexical=True)  # type: ignore[arg-type,return-value]

    first, second = store.timeouts
    assert first is not None and second is not None
    assert 0 < second <= first <= 5.0


def test_without_a_deadline_the_store_gets_none() -> None:
    store = _Store()
    ShardSearcher(lambda _: store, 1).run(0, REQUEST)  # type: ignore[arg-type,return-value]
    assert store.timeouts == [None]


@pytest.mark.parametrize("error", ["Overloaded", "ShardBusy", "Lambda.TooManyRequestsException"])
def test_overload_maps_to_429(error: str) -> None:
    status, body = map_execution({"status": "FAILED", "error": error, "cause": "x"})
    assert status == 429
    assert body["error"]["code"] == "too_many_requests"
    assert ERROR_STATUS[error][0] == 429


def _shard_states(shards: int = 2) -> list[dict[str, Any]]:
    definition = json.loads(render_definition(ASL.read_text(), shards))
    return [branch["States"] for branch in definition["States"]["SearchShards"]["Branches"]]


def test_throttled_or_busy_branches_fail_the_execution_as_overloaded_before_catch_all() -> None:
    for i, states in enumerate(_shard_states()):
        catches = states[f"SearchShard{i}"]["Catch"]
        overload = next(c for c in catches if "ShardBusy" in c["ErrorEquals"])
        # Catchers are tried in order: overload must be matched before States.ALL makes it a failed shard.
        assert catches.index(overload) < catches.index(next(c for c in catches if c["ErrorEquals"] == ["States.ALL"]))
        assert "Lambda.TooManyRequestsException" in overload["ErrorEquals"]
        target = states[overload["Next"]]
        assert target["Type"] == "Fail"
        assert ERROR_STATUS[target["Error"]][0] == 429


def test_the_shard_deadline_expires_before_step_functions_times_the_task_out() -> None:
    """Only the handler can tell busy from down; if the task's timeout fired first, a saturated shard would be
    caught as States.Timeout, i.e. as a failed shard and a degraded answer."""
    for i, states in enumerate(_shard_states()):
        task = states[f"SearchShard{i}"]
        assert StoreSettings().search_timeout_s < task["TimeoutSeconds"]
        throttle = next(r for r in task["Retry"] if r["ErrorEquals"] == ["Lambda.TooManyRequestsException"])
        waits = sum(throttle["IntervalSeconds"] * throttle["BackoffRate"] ** n for n in range(throttle["MaxAttempts"]))
        # Worst case: every retry wait, then a full search, within the execution's own timeout.
        assert waits + task["TimeoutSeconds"] < json.loads(ASL.read_text())["TimeoutSeconds"]
