"""The query workflow: the EXPRESS state machine built from ``statemachines/query.asl.json``."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct
from shardrag.statemachine import QUERY_FUNCTIONS, DefinitionError, placeholders, render_definition

from shardrag_cdk.config import DeploymentConfig
from shardrag_cdk.lambdas import log_retention, removal_policy
from shardrag_cdk.layout import STATE_MACHINE_FILE
from shardrag_cdk.nag import acknowledge


class QueryWorkflow(Construct):
    """Embed → Route → one Parallel branch per shard → (hybrid: Feedback) → FuseAndGenerate, run synchronously by
    the API.

    The definition stays inline (``DefinitionBody.from_string``) so that template checks and cfn-lint see it;
    function ARNs enter through ``definition_substitutions``, which grant nothing: invoke rights are granted
    per function below.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: Mapping[str, lambda_.IFunction],
        shard_count: int,
        deployment: DeploymentConfig,
    ) -> None:
        super().__init__(scope, construct_id)
        definition = render_definition(STATE_MACHINE_FILE.read_text(), shard_count)
        substitutions = {placeholder: functions[folder].function_arn for placeholder, folder in QUERY_FUNCTIONS.items()}
        missing, unused = placeholders(definition) - set(substitutions), set(substitutions) - placeholders(definition)
        if missing or unused:
            raise DefinitionError(
                f"{STATE_MACHINE_FILE.name}: unsubstituted {sorted(missing)}, unused {sorted(unused)}"
            )
        # /aws/vendedlogs/ keeps the account's CloudWatch Logs resource policy small (AWS's advice for
        # Step Functions log delivery).
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/vendedlogs/states/{Stack.of(self).stack_name}-query",
            retention=log_retention(deployment),
            removal_policy=removal_policy(deployment),
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_type=sfn.StateMachineType.EXPRESS,
            definition_body=sfn.DefinitionBody.from_string(definition),
            definition_substitutions=substitutions,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel(deployment.workflow_log_level),
                include_execution_data=deployment.workflow_log_execution_data,
            ),
        )
        for function in functions.values():
            function.grant_invoke(self.state_machine)
        if deployment.workflow_log_level != "ALL":
            acknowledge(
                self.state_machine,
                (
                    "AwsSolutions-SF1",
                    "This environment logs workflow errors only (deployment.workflow_log_level): an EXPRESS "
                    "execution writes one event per state at ALL, a cost that grows with shard count and traffic.",
                ),
            )
        acknowledge(
            self.state_machine.role,
            (
                "AwsSolutions-IAM5[Resource::*]",
                "X-Ray trace segments and CloudWatch Logs log-delivery actions, which support no resource scoping.",
            ),
        )
