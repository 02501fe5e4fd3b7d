"""The index version: a counter that every change to the index advances (an ingest, a delete, a rebalance).

Answers are cached under the version they were computed at, so that a cached answer is never served after a
change: the query reads the current version before it searches, and a change advances it before its first
write and again once it is complete (``IngestService``, ``Rebalancer``). An answer computed while a change
runs is therefore keyed by a version that no query reads after the change.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shardrag import shared_file

#: The counter's item in the answer-cache table (answers are ``answer#<key>``: the two can never collide).
VERSION_KEY = "index-version"


@runtime_checkable
class IndexVersion(Protocol):
    def current(self) -> int:
        """The version now (0 before the first change)."""
        ...

    def advance(self) -> int:
        """Move the version on (atomically, whoever else advances it at the same time); returns the new one."""
        ...


class MemoryIndexVersion:
    """One process's counter (tests)."""

    def __init__(self) -> None:
        self._value = 0
        self._lock = threading.Lock()

    def current(self) -> int:
        return self._value

    def advance(self) -> int:
        with self._lock:
            self._value += 1
            return self._value


class FileIndexVersion:
    """The counter in a file, shared by the local runtime's processes (ingestion in the front, queries in the
    query workers): an advance is a read-increment-replace under an exclusive lock, a read is one small read."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)

    def current(self) -> int:
        return int(shared_file.read_text(self._path) or 0)

    def advance(self) -> int:
        def bump(text: str | None) -> tuple[str, int]:
            value = int(text or 0) + 1
            return str(value), value

        return shared_file.rewrite(self._path, bump)


class DynamoDbIndexVersion:
    """The counter as one item of the answer-cache table: ``ADD`` is atomic, the read is strongly consistent (an
    eventually consistent read could return the version before a change that has completed)."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._db = client
        self._table = table_name

    def current(self) -> int:
        item = self._db.get_item(
            TableName=self._table, Key={"pk": {"S": VERSION_KEY}}, ConsistentRead=True, ProjectionExpression="v"
        ).get("Item")
        return int(item["v"]["N"]) if item else 0

    def advance(self) -> int:
        result = self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": VERSION_KEY}},
            UpdateExpression="ADD v :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
        return int(result["Attributes"]["v"]["N"])
