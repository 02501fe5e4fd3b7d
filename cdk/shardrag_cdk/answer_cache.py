"""The answer cache's table (``shardrag.caching``), created only where ``cache.answers`` is on.

One on-demand table (nothing runs or bills while idle: no cache cluster, no new always-on service) holds the
cached answers (``answer#<key>``, expired by DynamoDB's TTL on ``expires_at``) and the index version (one
item that ingestion advances). Each function gets the one action it uses, on this table only: Embed reads
(``GetItem``: the version, then the answer), FuseAndGenerate writes (``PutItem``: an answer), ingestion
advances the version (``UpdateItem``).
"""

from __future__ import annotations

from typing import Final

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct
from shardrag import env

from shardrag_cdk.lambdas import ShardRagFunction
from shardrag_cdk.nag import acknowledge

#: The TTL attribute ``shardrag.caching.answers.DynamoDbAnswerCache`` writes (epoch seconds).
TTL_ATTRIBUTE: Final = "expires_at"


class AnswerCacheTable(Construct):
    """The table and its grants (see the module docstring)."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=TTL_ATTRIBUTE,
            # A cache: everything in it can be recomputed, and a fresh table starts at index version 0 with no
            # answers, which is consistent.
            removal_policy=RemovalPolicy.DESTROY,
        )
        acknowledge(
            self.table,
            (
                "AwsSolutions-DDB3",
                "A cache of recomputable answers: point-in-time recovery would restore nothing worth having.",
            ),
        )

    def grant_lookup(self, function: ShardRagFunction) -> None:
        self._grant(function, "dynamodb:GetItem")

    def grant_store(self, function: ShardRagFunction) -> None:
        self._grant(function, "dynamodb:PutItem")

    def grant_advance(self, function: ShardRagFunction) -> None:
        self._grant(function, "dynamodb:UpdateItem")

    def _grant(self, function: ShardRagFunction, action: str) -> None:
        iam.Grant.add_to_principal(grantee=function.function, actions=[action], resource_arns=[self.table.table_arn])
        function.function.add_environment(env.ANSWER_CACHE_TABLE, self.table.table_name)
