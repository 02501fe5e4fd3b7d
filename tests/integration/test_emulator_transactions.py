"""The local AWS emulation's DynamoDB transactions: moto's own semantics, without its whole-table backups and
without keeping every item it ever created (indexing SciFact grew the local runtime to 17 GB before)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TABLE = "emulator-transactions"


@pytest.fixture(scope="module")
def dynamodb(local_runtime: Any) -> Iterator[Any]:
    # The package's runtime (moto's in-process mock is process-global: a second LocalAws stopping would end the
    # runtime's own emulation for every later test).
    client = local_runtime.aws.client("dynamodb")
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        yield client
    finally:
        client.delete_table(TableName=TABLE)


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _table(client: Any) -> dict[tuple[str, str], int]:
    rows = client.scan(TableName=TABLE)["Items"]
    return {(r["pk"]["S"], r["sk"]["S"]): int(r["n"]["N"]) for r in rows}


def _reset(client: Any) -> None:
    for pk, sk in _table(client):
        client.delete_item(TableName=TABLE, Key=_key(pk, sk))


# One operation: (kind, pk, sk, value, expected-current-value or None for "must not exist").
_keys = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]))
_operation = st.tuples(
    st.sampled_from(["put", "delete", "update"]),
    _keys,
    st.integers(0, 3),
    st.one_of(st.none(), st.integers(0, 3)),
)


def _transact_item(kind: str, key: tuple[str, str], value: int, expect: int | None) -> dict[str, Any]:
    condition: dict[str, Any] = (
        {"ConditionExpression": "attribute_not_exists(pk)"}
        if expect is None
        else {"ConditionExpression": "n = :e", "ExpressionAttributeValues": {":e": {"N": str(expect)}}}
    )
    if kind == "put":
        return {"Put": {"TableName": TABLE, "Item": {**_key(*key), "n": {"N": str(value)}}, **condition}}
    if kind == "delete":
        return {"Delete": {"TableName": TABLE, "Key": _key(*key), **condition}}
    values = {**condition.get("ExpressionAttributeValues", {}), ":v": {"N": str(value)}}
    return {
        "Update": {
            "TableName": TABLE,
            "Key": _key(*key),
            "UpdateExpression": "SET n = :v",
            **condition,
            "ExpressionAttributeValues": values,
        }
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.dictionaries(_keys, st.integers(0, 3), max_size=6),
    operations=st.lists(_operation, min_size=1, max_size=4, unique_by=lambda op: op[1]),
)
def test_a_transaction_applies_all_or_nothing(
    dynamodb: Any, before: dict[tuple[str, str], int], operations: list[tuple[str, tuple[str, str], int, Any]]
) -> None:
    _reset(dynamodb)
    for (pk, sk), n in before.items():
        dynamodb.put_item(TableName=TABLE, Item={**_key(pk, sk), "n": {"N": str(n)}})
    # The model: every condition holds against the state before the transaction, or nothing changes.
    holds = all(before.get(key) == expect for _, key, _, expect in operations)
    expected = dict(before)
    if holds:
        for kind, key, value, _ in operations:
            if kind == "delete":
                expected.pop(key, None)
            else:
                expected[key] = value
    try:
        dynamodb.transact_write_items(TransactItems=[_transact_item(*op) for op in operations])
        assert holds, "a transaction whose condition failed was applied"
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "TransactionCanceledException"
        assert not holds, f"a transaction whose conditions held was cancelled: {exc}"
    assert _table(dynamodb) == expected


def test_written_items_are_not_kept_once_replaced(dynamodb: Any) -> None:
    """moto lists every model instance it creates; the local runtime turns that off, or every registry record
    and queue message ever written stays in memory."""
    from moto.dynamodb.models.dynamo_type import Item

    _reset(dynamodb)
    for i in range(50):
        dynamodb.transact_write_items(
            TransactItems=[{"Put": {"TableName": TABLE, "Item": {**_key("a", "1"), "n": {"N": str(i)}}}}]
        )
    assert Item.instances_tracked == []  # type: ignore[attr-defined]


def test_a_transaction_does_not_copy_the_table(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the items a transaction names are backed up: its cost does not grow with the table."""
    from moto.dynamodb.models.dynamo_type import Item

    _reset(dynamodb)
    for i in range(200):
        dynamodb.put_item(TableName=TABLE, Item={**_key(f"p{i}", "1"), "n": {"N": "0"}})
    copied: list[Any] = []
    item_deepcopy = Item.__deepcopy__

    def counting(self: Any, memo: Any) -> Any:
        copied.append(self)
        return item_deepcopy(self, memo)

    monkeypatch.setattr(Item, "__deepcopy__", counting)
    dynamodb.transact_write_items(
        TransactItems=[{"Put": {"TableName": TABLE, "Item": {**_key("p1", "1"), "n": {"N": "1"}}}}]
    )
    assert len(copied) <= 2, f"{len(copied)} items deep-copied for a one-item transaction on 200 items"
