"""Running Lambda invocations in process: moto decides *that* a function is invoked, this module runs the
real handler from ``functions/`` with the real event.

moto funnels every invocation — Step Functions tasks, S3 notifications, event source mappings — through the
private ``LambdaFunction._invoke_lambda(event) -> (payload, errored, logs)``. Replacing that one method is the
whole integration; ``tests/integration/test_moto_dispatch_smoke.py`` fails loudly if a moto upgrade moves it.

The state machine engine's Lambda tasks take a shorter road to the same handlers: the engine would serialise
each event, sign it, send it through moto's Lambda API (which checksums, parses and re-serialises it) and parse
the answer back, for every one of the 3 + N tasks of a query — CPU spent in the runtime's one Python process
that no deployed invocation spends there. ``_invoke_lambda_function`` (the engine's call of Lambda's Invoke) is
replaced by a direct call with the same results: the handler's payload, ``FunctionError`` when it raised (so
Retry and Catch see the handler's error name), ``Lambda.ResourceNotFoundException`` for an unknown function.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from botocore.exceptions import ClientError
from moto.awslambda.models import LambdaFunction
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

logger = logging.getLogger("shardrag.local.dispatch")

Handler = Callable[[Any, Any], Any]


@dataclass
class LocalContext:
    """The attributes of a Lambda context object that Powertools and handlers read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    timeout_s: float = 30.0
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    _deadline: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class HandlerRegistry:
    """Function name -> code directory + ``module.function`` handler string, as Lambda would load them."""

    def __init__(self) -> None:
        self._specs: dict[str, tuple[Path, str, float]] = {}
        self._loaded: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self.invocations: dict[str, int] = {}

    def register(
        self, function_name: str, code_dir: Path, handler: str = "handler.handler", timeout_s: float = 30
    ) -> None:
        self._specs[function_name] = (code_dir, handler, timeout_s)

    def names(self) -> list[str]:
        return list(self._specs)

    def _load(self, function_name: str) -> Handler:
        loaded = self._loaded.get(function_name)
        if loaded is not None:
            return loaded
        with self._lock:
            if function_name in self._loaded:
                return self._loaded[function_name]
            code_dir, handler, _ = self._specs[function_name]
            module_name, _, attr = handler.rpartition(".")
            path = code_dir / (module_name.replace(".", "/") + ".py")
            spec = importlib.util.spec_from_file_location(f"shardrag_fn_{code_dir.name}_{module_name}", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load handler {handler!r} from {code_dir}")
            module: ModuleType = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)  # the handler module's cold start
            fn: Handler = getattr(module, attr)
            self._loaded[function_name] = fn
            return fn

    def invoke(self, function_name: str, event: Any) -> tuple[Any, bool]:
        """Run the handler; on an exception return Lambda's error payload and ``errored=True``."""
        if function_name not in self._specs:
            error = {
                "errorType": "ResourceNotFoundException",
                "errorMessage": f"no handler for {function_name}",
            }
            return error, True
        self.invocations[function_name] = self.invocations.get(function_name, 0) + 1
        try:
            handler = self._load(function_name)
            context = LocalContext(function_name=function_name, timeout_s=self._specs[function_name][2])
            return handler(event, context), False
        except Exception as exc:  # Lambda reports any exception as a function error, by class name
            logger.warning("%s raised %s: %s", function_name, type(exc).__name__, exc)
            return {
                "errorType": type(exc).__name__,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_exception(exc)[-3:],
            }, True


_registry: HandlerRegistry | None = None
_original_invoke: Any = None
_original_task_invoke: Any = None


def _function_name(function: str) -> str:
    """``FunctionName`` as a task passes it: a name, or an ARN, optionally with a qualifier."""
    if function.startswith("arn:"):
        return function.split(":")[6]
    return function.split(":")[0]


def _task_invoke(parameters: dict[str, Any], region: str, state_credentials: Any) -> dict[str, Any]:
    """The engine's Lambda Invoke, answered by the registry without the emulated Lambda API in between."""
    assert _registry is not None
    name = _function_name(str(parameters["FunctionName"]))
    if name not in _registry.names():
        # What Lambda's Invoke API answers; the engine names it Lambda.ResourceNotFoundException.
        raise ClientError(
            {  # the fields the engine reads, not a whole HTTP response
                "Error": {"Code": "ResourceNotFoundException", "Message": f"Function not found: {name}"},
                "ResponseMetadata": {"HTTPStatusCode": 404, "RequestId": str(uuid.uuid4())},  # type: ignore[typeddict-item]
            },
            "Invoke",
        )
    raw = parameters.get("Payload")
    event = json.loads(raw) if raw else {}
    result, errored = _registry.invoke(name, event)
    response: dict[str, Any] = {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": result}
    if errored:
        response["FunctionError"] = "Unhandled"
    return response


def install(registry: HandlerRegistry) -> None:
    """Route moto's Lambda invocations to ``registry``."""
    global _registry, _original_invoke, _original_task_invoke
    _registry = registry
    if _original_invoke is None:
        _original_invoke = LambdaFunction._invoke_lambda
    if _original_task_invoke is None:
        _original_task_invoke = lambda_eval_utils._invoke_lambda_function
    lambda_eval_utils._invoke_lambda_function = _task_invoke

    def _invoke_lambda(self: LambdaFunction, event: str | None = None) -> tuple[str, bool, str]:
        assert _registry is not None
        payload = json.loads(event) if isinstance(event, str | bytes) and event else (event or {})
        result, errored = _registry.invoke(self.function_name, payload)
        return json.dumps(result), errored, ""

    LambdaFunction._invoke_lambda = _invoke_lambda  # type: ignore[method-assign]


def uninstall() -> None:
    global _registry
    if _original_invoke is not None:
        LambdaFunction._invoke_lambda = _original_invoke  # type: ignore[method-assign]
    if _original_task_invoke is not None:
        lambda_eval_utils._invoke_lambda_function = _original_task_invoke
    _registry = None
