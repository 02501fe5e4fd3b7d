"""Which rows a query sees: epochs, so that an overwrite is atomic to readers (issue 15).

Every row carries the epoch that wrote it (``epoch_from``; 0: before epochs existed, always committed) and, once
a later version no longer has it, the epoch that retired it (``epoch_to``; 0: live). A writer begins an epoch,
writes its new rows under it, stamps the rows it retires with it, and commits it once everything is written. A
query reads one :class:`Snapshot` before it searches (at Embed) and every shard search and passage read of that
query filters by it: a row is seen when the epoch that wrote it was committed in the snapshot and the epoch that
retired it was not. So a query sees a document as it was before an overwrite's commit or as it is after it,
whatever the order in which the rows land on the shards: never a mix of versions, never a gap.

Epochs commit in any order (documents are written concurrently): a snapshot is the last epoch begun and the set
still open, which every filter excludes. A writer that dies leaves its epoch open, its rows unseen; the next run
on the same document adopts the epoch (``DocumentState.epoch``) and closes it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from shardrag import shared_file
from shardrag.records import Snapshot

#: The clock's item in the registry table (documents are ``doc#``, objects ``src#``: no collision).
CLOCK_KEY: Final = "epochs"


@runtime_checkable
class EpochClock(Protocol):
    def snapshot(self) -> Snapshot:
        """The epochs committed now (strongly consistent: a commit that returned is in it)."""
        ...

    def begin(self) -> int:
        """A new epoch, open (unseen) until :meth:`commit`: atomic, so no snapshot counts it committed early."""
        ...

    def commit(self, epoch: int) -> None:
        """Close ``epoch``: the next snapshot sees its rows, and not the rows it retired (idempotent)."""
        ...


class _State:
    """The clock's value: the last epoch begun and the open ones."""

    def __init__(self, last: int = 0, open_: set[int] | None = None) -> None:
        self.last = last
        self.open = open_ or set()

    def snapshot(self) -> Snapshot:
        return Snapshot(upto=self.last, open=sorted(self.open))


class MemoryEpochClock:
    """One process's clock (tests, and the in-process runtime)."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._state.snapshot()

    def begin(self) -> int:
        with self._lock:
            self._state.last += 1
            self._state.open.add(self._state.last)
            return self._state.last

    def commit(self, epoch: int) -> None:
        with self._lock:
            self._state.open.discard(epoch)


class FileEpochClock:
    """The clock in a JSON file shared by the local runtime's processes (ingestion in the front, queries in the
    query workers): a change is a read-modify-replace under an exclusive lock, a read is one small read of a file
    that is only ever replaced whole."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)

    @staticmethod
    def _parse(text: str | None) -> _State:
        data = json.loads(text or "{}")
        return _State(int(data.get("last", 0)), {int(e) for e in data.get("open", [])})

    def snapshot(self) -> Snapshot:
        return self._parse(shared_file.read_text(self._path)).snapshot()

    def _change(self, epoch: int | None) -> int:
        def change(text: str | None) -> tuple[str, int]:
            state = self._parse(text)
            done = epoch
            if done is None:
                state.last += 1
                done = state.last
                state.open.add(done)
            else:
                state.open.discard(done)
            return json.dumps({"last": state.last, "open": sorted(state.open)}), done

        return shared_file.rewrite(self._path, change)

    def begin(self) -> int:
        return self._change(None)

    def commit(self, epoch: int) -> None:
        self._change(epoch)


class DynamoDbEpochClock:
    """The clock as one item of the registry table. ``begin`` sets the counter and adds the epoch to the open set
    in one conditional update (retried when another writer began one in between): two separate updates would let
    a snapshot taken between them count the new epoch as committed."""

    def __init__(self, client: Any, table_name: str, *, attempts: int = 20) -> None:
        self._db = client
        self._table = table_name
        self._attempts = attempts

    def _get(self) -> _State:
        item = self._db.get_item(
            TableName=self._table,
            Key={"pk": {"S": CLOCK_KEY}},
            ConsistentRead=True,
            ProjectionExpression="#last, #open",
            ExpressionAttributeNames={"#last": "last", "#open": "open"},
        ).get("Item")
        if not item:
            return _State()
        open_ = {int(e) for e in item.get("open", {}).get("NS", [])}
        return _State(int(item.get("last", {}).get("N", "0")), open_)

    def snapshot(self) -> Snapshot:
        return self._get().snapshot()

    def begin(self) -> int:
        for attempt in range(self._attempts):
            if attempt:
                # Writers that collided retry at spread-out moments, not in lockstep.
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
            last = self._get().last
            epoch = last + 1
            try:
                self._db.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": CLOCK_KEY}},
                    UpdateExpression="SET #last = :epoch ADD #open :one",
                    ConditionExpression="attribute_not_exists(#last) OR #last = :last",
                    ExpressionAttributeNames={"#last": "last", "#open": "open"},
                    ExpressionAttributeValues={
                        ":epoch": {"N": str(epoch)},
                        ":last": {"N": str(last)},
                        ":one": {"NS": [str(epoch)]},
                    },
                )
                return epoch
            except self._db.exceptions.ConditionalCheckFailedException:
                continue
        raise RuntimeError(f"could not begin an epoch in {self._attempts} attempts: too many concurrent writers")

    def commit(self, epoch: int) -> None:
        self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": CLOCK_KEY}},
            UpdateExpression="DELETE #open :one",
            ExpressionAttributeNames={"#open": "open"},
            ExpressionAttributeValues={":one": {"NS": [str(epoch)]}},
        )
