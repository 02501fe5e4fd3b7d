"""DynamoDB tables built from the core's own ``CreateTable`` arguments, so the deployed keys and indexes cannot
drift from what the code queries (the local runtime creates its tables from the same arguments)."""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from shardrag_cdk.config import DeploymentConfig
from shardrag_cdk.lambdas import removal_policy

_ATTRIBUTE_TYPES = {
    "S": dynamodb.AttributeType.STRING,
    "N": dynamodb.AttributeType.NUMBER,
    "B": dynamodb.AttributeType.BINARY,
}


def definition_table(
    scope: Construct,
    construct_id: str,
    definition: dict[str, Any],
    *,
    deployment: DeploymentConfig,
    ttl_attribute: str | None = None,
) -> dynamodb.Table:
    """An on-demand, encrypted table with point-in-time recovery, keyed and indexed as ``definition`` says."""
    types = {a["AttributeName"]: a["AttributeType"] for a in definition["AttributeDefinitions"]}

    def key(schema: list[dict[str, str]], kind: str) -> dynamodb.Attribute | None:
        names = [k["AttributeName"] for k in schema if k["KeyType"] == kind]
        return dynamodb.Attribute(name=names[0], type=_ATTRIBUTE_TYPES[types[names[0]]]) if names else None

    partition = key(definition["KeySchema"], "HASH")
    assert partition is not None
    table = dynamodb.Table(
        scope,
        construct_id,
        partition_key=partition,
        sort_key=key(definition["KeySchema"], "RANGE"),
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        encryption=dynamodb.TableEncryption.AWS_MANAGED,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True
        ),
        time_to_live_attribute=ttl_attribute,
        removal_policy=removal_policy(deployment),
    )
    for index in definition.get("GlobalSecondaryIndexes", []):
        index_partition = key(index["KeySchema"], "HASH")
        assert index_partition is not None
        projection = index["Projection"]
        table.add_global_secondary_index(
            index_name=index["IndexName"],
            partition_key=index_partition,
            sort_key=key(index["KeySchema"], "RANGE"),
            projection_type=dynamodb.ProjectionType(projection["ProjectionType"]),
            non_key_attributes=projection.get("NonKeyAttributes"),
        )
    return table
