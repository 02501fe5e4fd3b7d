"""The ShardRAG Lambda functions: one configuration path for all of them, so they cannot drift apart."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Final, get_args

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct
from shardrag import env
from shardrag.config import Settings

from shardrag_cdk.config import DeploymentConfig, DeploymentConfigError, LogRetentionDays
from shardrag_cdk.layout import FUNCTION_LAYERS, MODEL_FROM_S3, MODEL_MOUNT, QUERY_FUNCTION_NAMES, FunctionName
from shardrag_cdk.nag import acknowledge
from shardrag_cdk.network import FunctionNetwork
from shardrag_cdk.packaging import ARCHITECTURE, RUNTIME, LambdaPackaging

#: Standard Powertools variable without a constant in ``shardrag.env`` (it only matters to deployments).
POWERTOOLS_METRICS_NAMESPACE: Final = "POWERTOOLS_METRICS_NAMESPACE"
#: Powertools would record every handler's return value in X-Ray: those are passages and answers.
POWERTOOLS_TRACER_CAPTURE_RESPONSE: Final = "POWERTOOLS_TRACER_CAPTURE_RESPONSE"
ALIAS_NAME: Final = "live"
_RUNTIME_REASON: Final = (
    "Python 3.12 is the runtime the dependency layers are built and import-checked for (manylinux cp312 "
    "wheels, scripts/build_lambda_assets.py); a newer runtime means rebuilding and re-checking them."
)
_RETENTION: Final[dict[int, logs.RetentionDays]] = dict(
    zip(
        get_args(LogRetentionDays),
        (
            logs.RetentionDays.ONE_DAY, logs.RetentionDays.THREE_DAYS, logs.RetentionDays.FIVE_DAYS,
            logs.RetentionDays.ONE_WEEK, logs.RetentionDays.TWO_WEEKS, logs.RetentionDays.ONE_MONTH,
            logs.RetentionDays.TWO_MONTHS, logs.RetentionDays.THREE_MONTHS, logs.RetentionDays.FOUR_MONTHS,
            logs.RetentionDays.FIVE_MONTHS, logs.RetentionDays.SIX_MONTHS, logs.RetentionDays.ONE_YEAR,
            logs.RetentionDays.THIRTEEN_MONTHS, logs.RetentionDays.EIGHTEEN_MONTHS, logs.RetentionDays.TWO_YEARS,
            logs.RetentionDays.THREE_YEARS, logs.RetentionDays.FIVE_YEARS, logs.RetentionDays.SIX_YEARS,
            logs.RetentionDays.SEVEN_YEARS, logs.RetentionDays.EIGHT_YEARS, logs.RetentionDays.NINE_YEARS,
            logs.RetentionDays.TEN_YEARS,
        ),
        strict=True,
    )
)  # fmt: skip


def removal_policy(deployment: DeploymentConfig) -> RemovalPolicy:
    return RemovalPolicy.RETAIN if deployment.removal_policy == "retain" else RemovalPolicy.DESTROY


def log_retention(deployment: DeploymentConfig) -> logs.RetentionDays:
    """The configured retention as CDK's enum (the config model already restricts it to CloudWatch's values)."""
    return _RETENTION[deployment.log_retention_days]


def runtime_environment(settings: Settings, deployment: DeploymentConfig, function: FunctionName) -> dict[str, str]:
    """Variables every function gets: settings as JSON (secret *names* only), Powertools, the model dir."""
    variables = {
        env.SETTINGS_JSON: settings.to_env_json(),
        env.POWERTOOLS_SERVICE_NAME: deployment.service_name,
        POWERTOOLS_METRICS_NAMESPACE: deployment.metrics_namespace,
        env.LOG_LEVEL: deployment.log_level,
        POWERTOOLS_TRACER_CAPTURE_RESPONSE: "false",
    }
    if "model" in FUNCTION_LAYERS[function]:
        variables[env.MODEL_DIR] = MODEL_MOUNT
    return variables


#: Lambda's limit on a function's environment variables (keys and values together).
ENVIRONMENT_LIMIT_BYTES: Final = 4 * 1024
#: The longest a deploy-time reference can resolve to: an IP address, else an ARN or a name (a secret's ARN with a
#: generated name is ~120 characters; allow 128).
_IP_ALLOWANCE: Final = len("255.255.255.255")
_TOKEN_ALLOWANCE: Final = 128
_TOKEN = re.compile(r"\$\{Token\[[^\]]+\]\}")


def checked_environment(scope: Construct, function: FunctionName, variables: dict[str, str]) -> dict[str, str]:
    """``variables``, after checking they fit Lambda's 4 KB once every deploy-time reference is resolved.

    The settings carry one entry per shard with its secrets' ARNs: enough shards would make the deployment fail
    on the environment's size, so synthesis refuses it first (allowing each reference its longest likely value).
    """
    stack = Stack.of(scope)

    def allowance(match: re.Match[str]) -> str:
        resolved = json.dumps(stack.resolve(match.group(0)))
        return "x" * (_IP_ALLOWANCE if "PrivateIp" in resolved else _TOKEN_ALLOWANCE)

    size = sum(len(key.encode()) + len(_TOKEN.sub(allowance, value).encode()) for key, value in variables.items())
    if size > ENVIRONMENT_LIMIT_BYTES:
        raise DeploymentConfigError(
            f"the {function} function's environment would take up to {size} bytes once resolved, over Lambda's "
            f"{ENVIRONMENT_LIMIT_BYTES}: fewer shards (store.shard_count), or shorter settings"
        )
    return variables


class ShardRagFunction(Construct):
    """One function: Python 3.12, X-Ray active, its own log group, a ``live`` alias (provisioned concurrency
    attaches there, and callers invoke it so that they use the warmed environments)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: FunctionName,
        settings: Settings,
        deployment: DeploymentConfig,
        packaging: LambdaPackaging,
        network: FunctionNetwork | None,
        extra_environment: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        sizing = deployment.functions.of(name)
        log_group = logs.LogGroup(
            self,
            "Logs",
            retention=log_retention(deployment),
            removal_policy=removal_policy(deployment),
        )
        placement = network.placement(name) if network else {}
        # An explicit role instead of the default one: logs go to this function's own log group only,
        # rather than AWSLambdaBasicExecutionRole's logs:* on every group of the account.
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"), description=f"ShardRAG {name}"
        )
        log_group.grant_write(self.role)
        if placement:
            # Creating and removing the function's network interfaces in the VPC.
            self.role.add_managed_policy(
                iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AWSLambdaVPCAccessExecutionRole")
            )
            acknowledge(
                self.role,
                (
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                    "AWSLambdaVPCAccessExecutionRole]",
                    "AWS's policy for Lambda VPC networking: ENI actions cannot be scoped to resources.",
                ),
            )
        self.function = lambda_.Function(
            self,
            "Function",
            description=f"ShardRAG {name}",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler="handler.handler",
            role=self.role,
            code=packaging.function_code(name),
            layers=packaging.layers_for(name),
            memory_size=sizing.memory_mb,
            timeout=Duration.seconds(sizing.timeout_s),
            reserved_concurrent_executions=sizing.reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            environment=checked_environment(
                self, name, {**runtime_environment(settings, deployment, name), **(extra_environment or {})}
            ),
            vpc=placement.get("vpc"),
            vpc_subnets=placement.get("subnets"),
            security_groups=placement.get("security_groups"),
        )
        if name in MODEL_FROM_S3:
            # The model zip, read once per cold start (use_model_archive); exactly that object, nothing else.
            archive = packaging.model_archive()
            self.function.add_environment(env.MODEL_ARCHIVE, archive.s3_object_url)
            iam.Grant.add_to_principal(
                grantee=self.role,
                actions=["s3:GetObject"],
                resource_arns=[archive.bucket.arn_for_objects(archive.s3_object_key)],
            )
        self.alias = lambda_.Alias(
            self,
            "Live",
            alias_name=ALIAS_NAME,
            version=self.function.current_version,
            provisioned_concurrent_executions=sizing.provisioned_concurrency or None,
        )
        self.name = name
        self.timeout_s = sizing.timeout_s
        self.log_group = log_group
        acknowledge(
            self.function,
            ("AwsSolutions-L1", _RUNTIME_REASON),
            ("Serverless-LambdaLatestVersion", _RUNTIME_REASON),
            (
                "Serverless-LambdaDLQ",
                "Never invoked asynchronously: Step Functions invokes the query functions synchronously and "
                "ingest is polled from SQS, whose own dead-letter queue keeps failed messages.",
            ),
        )
        acknowledge(
            self.role,
            (
                "AwsSolutions-IAM5[Resource::*]",
                "X-Ray PutTraceSegments/PutTelemetryRecords (tracing is on) support no resource scoping.",
            ),
        )


class QueryFunctions(Construct):
    """The query-path functions (``layout.QUERY_FUNCTION_NAMES``: Embed, Route, ShardSearch, Feedback,
    FuseAndGenerate)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        deployment: DeploymentConfig,
        packaging: LambdaPackaging,
        network: FunctionNetwork | None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.by_name: dict[FunctionName, ShardRagFunction] = {
            name: ShardRagFunction(
                self,
                "".join(part.capitalize() for part in name.split("_")),
                name=name,
                settings=settings,
                deployment=deployment,
                packaging=packaging,
                network=network,
            )
            for name in QUERY_FUNCTION_NAMES
        }

    def aliases(self) -> dict[str, lambda_.IFunction]:
        return {name: fn.alias for name, fn in self.by_name.items()}
