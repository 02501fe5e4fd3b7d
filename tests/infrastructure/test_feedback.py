"""The Feedback function (a hybrid query's second, dense round, ``shardrag.feedback``) is deployed like ShardSearch:
it reads opening-chunk vectors and searches every shard itself, so it needs the same layers, network, settings and
secrets; the workflow may invoke it where the definition names it, and the operator sees it like the other query
functions. Found by resource properties, never by logical id."""

from __future__ import annotations

import json
from typing import Any

from cdk_synthesis import Synthesis
from shardrag.statemachine import PLACEHOLDER
from shardrag_cdk.layout import FUNCTION_AWS_SERVICES, FUNCTION_LAYERS, STORE_FUNCTIONS
from shardrag_cdk.observability import FEEDBACK_FALLBACKS_METRIC, FEEDBACK_SKIPPED_METRIC
from test_template import _actions, _alias_function, _definition, _project_functions, _refs, _role_statements

FEEDBACK_PLACEHOLDER = "FeedbackFunctionArn"


def _function(synth: Synthesis, name: str) -> tuple[str, dict[str, Any]]:
    """Logical id and properties of the project function ``name``."""
    (found,) = [
        (function_id, function["Properties"])
        for function_id, function in _project_functions(synth).items()
        if function["Properties"]["Description"] == f"ShardRAG {name}"
    ]
    return found


def _alias_of(synth: Synthesis, function_id: str) -> str:
    """The ``live`` alias of a function, found through the aliases rather than through the definition."""
    (alias_id,) = [
        alias_id
        for alias_id in synth.resources("AWS::Lambda::Alias")
        if _alias_function(synth, alias_id) == function_id
    ]
    return alias_id


def test_the_store_functions_are_those_that_carry_pymilvus() -> None:
    assert set(STORE_FUNCTIONS) == {name for name, layers in FUNCTION_LAYERS.items() if "milvus" in layers}
    assert "feedback" in STORE_FUNCTIONS
    # No AWS API beyond ShardSearch's (the Milvus token and CA certificate): no interface endpoint of its own.
    assert FUNCTION_AWS_SERVICES["feedback"] == FUNCTION_AWS_SERVICES["shard_search"] == ("secretsmanager",)


def test_feedback_carries_the_milvus_layer(synth: Synthesis) -> None:
    _, feedback = _function(synth, "feedback")
    _, search = _function(synth, "shard_search")
    layers = synth.resources("AWS::Lambda::LayerVersion")
    described = [layers[layer_id]["Properties"]["Description"] for ref in feedback["Layers"] for layer_id in _refs(ref)]
    assert described == ["ShardRAG core layer", "ShardRAG base layer", "ShardRAG milvus layer"]
    assert feedback["Layers"] == search["Layers"]
    assert feedback["Handler"] == "handler.handler"


def test_feedback_runs_in_the_vpc_like_shard_search(synth: Synthesis) -> None:
    assert synth.config.deployment.network is not None  # both environments run their store in a VPC
    feedback_id, feedback = _function(synth, "feedback")
    _, search = _function(synth, "shard_search")
    (functions_sg,) = [
        k
        for k, v in synth.resources("AWS::EC2::SecurityGroup").items()
        if v["Properties"]["GroupDescription"] == "ShardRAG functions that reach the vector store"
    ]
    vpc = feedback.get("VpcConfig")
    assert vpc is not None, "feedback is outside the VPC: it could not reach Milvus"
    assert vpc == search["VpcConfig"]
    assert _refs(vpc["SecurityGroupIds"]) == {functions_sg}
    assert len(vpc["SubnetIds"]) == synth.config.deployment.network.max_azs
    # Lambda creates the function's network interfaces with the role's rights: AWS's VPC access policy.
    (role_id,) = _refs(feedback["Role"])
    managed = json.dumps(synth.template["Resources"][role_id]["Properties"].get("ManagedPolicyArns", []))
    assert "service-role/AWSLambdaVPCAccessExecutionRole" in managed, feedback_id


def test_feedback_gets_shard_search_settings_and_sizing(synth: Synthesis) -> None:
    _, feedback = _function(synth, "feedback")
    _, search = _function(synth, "shard_search")
    # The same settings JSON (store endpoint, collections, secret names, search timeout) and Powertools variables.
    assert feedback["Environment"] == search["Environment"]
    sizing = synth.config.deployment.functions.feedback
    assert (feedback["MemorySize"], feedback["Timeout"]) == (sizing.memory_mb, sizing.timeout_s)
    assert feedback.get("ReservedConcurrentExecutions") == sizing.reserved_concurrency


def test_feedback_may_read_the_milvus_secrets_and_nothing_more(synth: Synthesis) -> None:
    statements = _role_statements(synth)
    secrets = set(synth.resources("AWS::SecretsManager::Secret"))
    assert secrets  # the root password and the CA certificate of the stack's Milvus

    def readable(name: str) -> set[str]:
        return {
            secret
            for statement in statements[name]
            if "secretsmanager:GetSecretValue" in _actions(statement)
            for secret in _refs(statement["Resource"])
        }

    assert readable("feedback") == secrets == readable("shard_search")
    # Nothing beyond ShardSearch's rights (logs, traces, the secrets): no bucket, table, queue, model or function.
    actions = {name: {a for s in statements[name] for a in _actions(s)} for name in ("feedback", "shard_search")}
    assert actions["feedback"] == actions["shard_search"]


def test_the_workflow_role_may_invoke_feedback(synth: Synthesis) -> None:
    (machine,) = synth.properties("AWS::StepFunctions::StateMachine")
    (role_id,) = _refs(machine["RoleArn"])
    alias_id = _alias_of(synth, _function(synth, "feedback")[0])
    invoked = {
        ref
        for policy in synth.properties("AWS::IAM::Policy")
        if role_id in _refs(policy["Roles"])
        for statement in policy["PolicyDocument"]["Statement"]
        if statement["Effect"] == "Allow" and "lambda:InvokeFunction" in _actions(statement)
        for ref in _refs(statement["Resource"])
    }
    assert alias_id in invoked


def test_the_definition_invokes_feedback_through_its_arn(synth: Synthesis) -> None:
    (machine,) = synth.properties("AWS::StepFunctions::StateMachine")
    states = _definition(synth)["States"]
    assert states["Feedback"]["Parameters"]["FunctionName"] == f"${{{FEEDBACK_PLACEHOLDER}}}"
    assert states["FeedbackWanted"]["Choices"][0]["Next"] == "Feedback"
    assert FEEDBACK_PLACEHOLDER in PLACEHOLDER.findall(machine["DefinitionString"])
    # Substituted with the ARN of Feedback's live alias (an alias's Ref is its ARN).
    substituted = machine["DefinitionSubstitutions"][FEEDBACK_PLACEHOLDER]
    assert substituted == {"Ref": _alias_of(synth, _function(synth, "feedback")[0])}


def test_feedback_and_its_fallbacks_are_on_the_dashboard(synth: Synthesis) -> None:
    feedback_id, _ = _function(synth, "feedback")
    (dashboard,) = synth.properties("AWS::CloudWatch::Dashboard")
    assert feedback_id in _refs(dashboard["DashboardBody"])  # its duration and errors
    assert f'\\"{FEEDBACK_FALLBACKS_METRIC}\\"' in json.dumps(dashboard["DashboardBody"])
    assert f'\\"{FEEDBACK_SKIPPED_METRIC}\\"' in json.dumps(dashboard["DashboardBody"])


def test_feedback_counts_in_the_query_function_error_rate_alarm(synth: Synthesis) -> None:
    feedback_id, _ = _function(synth, "feedback")
    (alarm,) = [
        a
        for a in synth.properties("AWS::CloudWatch::Alarm")
        if a.get("AlarmDescription") == "Share of query-path Lambda invocations that failed"
    ]
    measured = {
        (query["MetricStat"]["Metric"]["MetricName"], ref)
        for query in alarm["Metrics"]
        if "MetricStat" in query
        for dimension in query["MetricStat"]["Metric"]["Dimensions"]
        for ref in _refs(dimension["Value"])
    }
    assert {("Errors", feedback_id), ("Invocations", feedback_id)} <= measured
