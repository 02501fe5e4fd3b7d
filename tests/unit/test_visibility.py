"""The epoch clocks (``shardrag.visibility``): every implementation hands out each epoch once, counts it
committed only after ``commit``, and, deployed, is safe under concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from shardrag.ingestion.registry import table_definition
from shardrag.records import Snapshot
from shardrag.visibility import DynamoDbEpochClock, EpochClock, FileEpochClock, MemoryEpochClock


@pytest.fixture(params=["memory", "file", "dynamodb"])
def clock(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EpochClock]:
    if request.param == "memory":
        yield MemoryEpochClock()
    elif request.param == "file":
        yield FileEpochClock(tmp_path / "index" / "epochs.json")
    else:
        with mock_aws():
            client = boto3.client("dynamodb", region_name="us-east-1")
            client.create_table(**table_definition("registry"))
            yield DynamoDbEpochClock(client, "registry")


def test_an_epoch_is_unseen_until_committed_and_commits_in_any_order(clock: EpochClock) -> None:
    assert clock.snapshot() == Snapshot()
    first, second = clock.begin(), clock.begin()
    assert (first, second) == (1, 2)
    during = clock.snapshot()
    assert not during.committed(first) and not during.committed(second) and during.committed(0)
    clock.commit(second)
    after = clock.snapshot()
    assert after.committed(second) and not after.committed(first)
    clock.commit(first)
    clock.commit(first)  # idempotent: a retried commit
    assert clock.snapshot() == Snapshot(upto=2, open=[])
    # A snapshot taken before an epoch began does not see that epoch's rows, whenever it commits.
    third = clock.begin()
    clock.commit(third)
    assert not after.committed(third) and not after.sees(third, 0) and after.sees(second, third)


def test_concurrent_writers_never_share_an_epoch(clock: EpochClock) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            epoch = clock.begin()
            with lock:
                got.append(epoch)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 41))
    assert clock.snapshot().open == sorted(got)


def test_a_row_is_seen_from_its_writers_commit_until_its_retirers_commit() -> None:
    before, during, after = Snapshot(upto=4), Snapshot(upto=5, open=[5]), Snapshot(upto=5)
    old, new = (3, 5), (5, 0)  # an old row retired by epoch 5, its replacement written by it
    assert before.sees(*old) and during.sees(*old) and not after.sees(*old)
    assert not before.sees(*new) and not during.sees(*new) and after.sees(*new)
    assert Snapshot().sees(0, 0)  # rows written before epochs: always committed, live
    assert "epoch_from not in [5]" in during.expr() and "epoch_to in [5]" in during.expr()
