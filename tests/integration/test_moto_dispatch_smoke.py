"""Fails loudly if a moto upgrade breaks what the local runtime relies on: the private Lambda invocation hook,
Step Functions tasks reaching it, Catch seeing the handler's error name, S3 notifications reaching it, and the
two engine entry points the runtime wraps for speed."""

from __future__ import annotations

import inspect
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

HANDLER = textwrap.dedent(
    """
    class Boom(Exception):
        pass

    SEEN = []

    def handler(event, context):
        SEEN.append(event)
        if isinstance(event, dict) and event.get("fail"):
            raise Boom("asked to fail")
        return {"echo": event, "function": context.function_name}
    """
)


def test_private_hooks_still_exist(local_runtime: Any) -> None:
    from moto.awslambda.models import LambdaFunction
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.backend.execution import SyncExecution

    assert list(inspect.signature(LambdaFunction._invoke_lambda).parameters)[:2] == ["self", "event"]
    from shardrag_local import dispatch

    task_invoke = dispatch._original_task_invoke or lambda_eval_utils._invoke_lambda_function
    assert list(inspect.signature(task_invoke).parameters) == ["parameters", "region", "state_credentials"]
    import importlib

    from shardrag_local import emulator

    for name in emulator._STATE_DATA_MODULES:  # each still copies state data through its own ``copy`` global
        assert importlib.import_module(name).copy is emulator._JsonCopyModule, name
    from moto.stepfunctions.parser.asl.utils import json_path

    assert getattr(json_path.parse, "_shardrag_cached", False)
    assert callable(lambda_eval_utils.boto_client_for)
    assert callable(AmazonStateLanguageParser.parse)
    assert hasattr(SyncExecution, "to_start_sync_execution_output")


def test_the_engines_state_copy_is_a_deep_copy() -> None:
    from shardrag_local.emulator import _json_copy

    original = {"a": [1, 2.5, {"b": "c", "d": None, "e": True}], "f": (1, [2])}
    copied = _json_copy(original)
    assert copied == original
    copied["a"][2]["b"] = "changed"
    copied["f"][1].append(3)
    assert original == {"a": [1, 2.5, {"b": "c", "d": None, "e": True}], "f": (1, [2])}


@pytest.fixture(scope="module")
def smoke_function(local_runtime: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    code = tmp_path_factory.mktemp("smoke")
    (code / "handler.py").write_text(HANDLER)
    aws = local_runtime.aws
    lam = aws.client("lambda")
    from shardrag_local.emulator import _placeholder_zip

    arn = lam.create_function(
        FunctionName="smoke-fn",
        Runtime="python3.12",
        Role=aws._role_arn(),
        Handler="handler.handler",
        Code={"ZipFile": _placeholder_zip()},
    )["FunctionArn"]
    aws.registry.register("smoke-fn", Path(code), "handler.handler")
    return "smoke-fn", arn


def test_state_machine_task_runs_the_handler_in_process_and_catch_sees_its_error(
    local_runtime: Any, smoke_function: tuple[str, str]
) -> None:
    name, arn = smoke_function
    definition = {
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": arn, "Payload.$": "$"},
                "OutputPath": "$.Payload",
                "Catch": [{"ErrorEquals": ["Boom"], "ResultPath": "$.caught", "Next": "Caught"}],
                "End": True,
            },
            "Caught": {"Type": "Pass", "Parameters": {"error.$": "$.caught.Error"}, "End": True},
        },
    }
    aws = local_runtime.aws
    sfn = aws.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="smoke", definition=json.dumps(definition), roleArn=aws._role_arn(), type="EXPRESS"
    )["stateMachineArn"]
    before = aws.registry.invocations.get(name, 0)
    ok = aws.start_sync_execution(machine, json.dumps({"x": 1}))
    assert ok["status"] == "SUCCEEDED", ok
    assert json.loads(ok["output"]) == {"echo": {"x": 1}, "function": name}
    caught = aws.start_sync_execution(machine, json.dumps({"fail": True}))
    assert caught["status"] == "SUCCEEDED" and json.loads(caught["output"]) == {"error": "Boom"}
    assert aws.registry.invocations[name] == before + 2


def test_a_task_calling_an_unknown_function_fails_with_lambdas_error_name(local_runtime: Any) -> None:
    definition = {
        "StartAt": "Call",
        "States": {
            "Call": {
                "Type": "Task",
                "Resource": "arn:aws:states:::lambda:invoke",
                "Parameters": {"FunctionName": "arn:aws:lambda:us-east-1:123456789012:function:nobody", "Payload": {}},
                "End": True,
            }
        },
    }
    aws = local_runtime.aws
    machine = aws.client("stepfunctions").create_state_machine(
        name="smoke-missing", definition=json.dumps(definition), roleArn=aws._role_arn(), type="EXPRESS"
    )["stateMachineArn"]
    result = aws.start_sync_execution(machine, "{}")
    assert result["status"] == "FAILED" and result["error"] == "Lambda.ResourceNotFoundException", result


def test_s3_notification_reaches_the_handler(local_runtime: Any, smoke_function: tuple[str, str]) -> None:
    name, arn = smoke_function
    aws = local_runtime.aws
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="smoke-bucket")
    s3.put_bucket_notification_configuration(
        Bucket="smoke-bucket",
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [{"LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    before = aws.registry.invocations.get(name, 0)
    s3.put_object(Bucket="smoke-bucket", Key="a/b c.txt", Body=b"hello")
    assert aws.registry.invocations.get(name, 0) == before + 1
