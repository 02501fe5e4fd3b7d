"""API Gateway mapping templates and the request model, generated from the core package's contract.

Pure Python (no CDK import). The response template is written from :data:`shardrag.errors.ERROR_STATUS` and
mirrors :func:`shardrag.api_contract.map_execution` (what the local HTTP API does), so both fronts give the
same status codes and bodies; a test compares them entry by entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from shardrag.api_contract import GENERIC_MESSAGE
from shardrag.config import TenancySettings
from shardrag.errors import ERROR_STATUS, RETRY_AFTER_S, Overloaded
from shardrag.request import query_request_schema

TIMEOUT_MESSAGE: Final = "the query workflow timed out"
#: API Gateway's own limit for an integration (a longer query gets the INTEGRATION_TIMEOUT gateway response).
MAX_MESSAGE_CHARS: Final = 500
#: VTL: escape a string for a JSON body. escapeJavaScript also escapes ``'`` as ``\\'``, invalid in JSON.
_JSON_STRING = '$util.escapeJavaScript({value}).replaceAll("\\\\\'","\'")'
#: A claim name that can sit inside a VTL single-quoted key (``custom:tenant``, ``tenant_id``).
CLAIM_PATTERN: Final = r"[A-Za-z0-9_.:-]{1,128}"


def tenant_reference(auth: str, tenancy: TenancySettings) -> str | None:
    """The VTL reference that holds the caller's tenant, taken from its verified identity; None in single mode.

    Only a Cognito user pool's ID-token claims carry a tenant API Gateway can read: ``$context.identity`` holds
    an IAM caller's ARN and account but not its principal tags, and an API key identifies a client for usage
    plans, not a tenant. The deployment config refuses multi-tenant mode with those (see ``config.py``).
    """
    if tenancy.mode == "single":
        return None
    if auth != "cognito":
        raise ValueError(f"multi-tenant mode needs auth 'cognito', not {auth!r}")
    if not re.fullmatch(CLAIM_PATTERN, tenancy.claim):
        raise ValueError(f"tenancy.claim {tenancy.claim!r} does not match {CLAIM_PATTERN}")
    # Bracket notation: a name such as custom:tenant cannot be written in dot notation.
    return f"$context.authorizer.claims['{tenancy.claim}']"


def request_template(state_machine_arn: str, tenant: str | None = None) -> str:
    """The StartSyncExecution request: ``{"request": <the validated body, untouched>, "caller": {"tenant"}}``.

    ``tenant`` is a VTL reference into the request context (:func:`tenant_reference`), never the body; without
    one (single-tenant mode) the tenant is empty. An absent claim also gives an empty tenant, which the workflow
    refuses in multi-tenant mode. The input is a JSON string inside the request JSON, so the tenant, a JSON
    string inside the input, is escaped twice.
    """
    body = _JSON_STRING.format(value="$input.json('$')")
    lines: list[str] = []
    if tenant:
        lines += [
            '#set($tenant = "")',
            f"#if({tenant})",
            f"#set($tenant = {tenant})",
            "#end",
            "#set($tenant = " + _JSON_STRING.format(value="$tenant") + ")",
        ]
        caller = _JSON_STRING.format(value="$tenant")
    else:
        caller = ""
    execution_input = f'{{\\"request\\": {body}, \\"caller\\": {{\\"tenant\\": \\"{caller}\\"}}}}'
    lines += [
        "{",
        f'  "stateMachineArn": "{state_machine_arn}",',
        f'  "input": "{execution_input}"',
        "}",
    ]
    return "\n".join(lines)


def _error_branch(keyword: str, name: str, status: int, code: str) -> list[str]:
    lines = [
        f'#{keyword}($error == "{name}")',
        f"#set($context.responseOverride.status = {status})",
        f'#set($code = "{code}")',
        "#set($message = $detail)",
    ]
    if status == Overloaded.status:  # shed, not failed: tell the caller when to come back, as the stage's 429 does
        lines.append(f'#set($context.responseOverride.header.Retry-After = "{RETRY_AFTER_S}")')
    return lines


def response_template(error_status: Mapping[str, tuple[int, str]] = ERROR_STATUS) -> str:
    """The integration response: SUCCEEDED → 200 + output; FAILED → status by error name; TIMED_OUT → 504.

    For a known error the message is the Lambda ``errorMessage`` inside ``cause`` (never its stack trace),
    falling back to the error name; an unknown error gets a generic message and a 500.
    """
    lines = [
        "#set($status = $input.path('$.status'))",
        '#if($status == "SUCCEEDED")',
        "$input.path('$.output')",
        '#elseif($status == "TIMED_OUT")',
        "#set($context.responseOverride.status = 504)",
        json.dumps({"error": {"code": "timeout", "message": TIMEOUT_MESSAGE}}),
        "#else",
        "#set($error = $input.path('$.error'))",
        "#set($cause = $input.path('$.cause'))",
        "#set($detail = $error)",
        # A Lambda failure's cause is JSON with errorMessage/errorType/stackTrace; other causes are text.
        '#if($cause && $cause.startsWith("{"))',
        "#set($parsed = $util.parseJson($cause))",
        "#if($parsed.errorMessage && $parsed.errorMessage != '')",
        "#set($detail = $parsed.errorMessage)",
        "#end",
        "#end",
        f"#if($detail.length() > {MAX_MESSAGE_CHARS})",
        f"#set($detail = $detail.substring(0, {MAX_MESSAGE_CHARS}))",
        "#end",
    ]
    keyword = "if"
    for name, (status, code) in sorted(error_status.items()):
        lines += _error_branch(keyword, name, status, code)
        keyword = "elseif"
    lines += [
        "#else",
        "#set($context.responseOverride.status = 500)",
        '#set($code = "internal_error")',
        f'#set($message = "{GENERIC_MESSAGE}")',
        "#end",
        '{"error": {"code": "$code", "message": "' + _JSON_STRING.format(value="$message") + '"}}',
        "#end",
    ]
    return "\n".join(lines)


def error_template(code: str, message_expression: str) -> str:
    """A gateway-response body in the contract's error shape (``message_expression`` is VTL)."""
    return '{"error": {"code": "' + code + '", "message": ' + message_expression + "}}"


def _draft4(node: Any) -> Any:
    """Rewrite the draft 2020-12 constructs pydantic emits into the draft-4 forms API Gateway accepts."""
    if isinstance(node, list):
        return [_draft4(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$defs":
            out["definitions"] = _draft4(value)
        elif key == "$ref" and isinstance(value, str):
            out["$ref"] = value.replace("#/$defs/", "#/definitions/")
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "default" and value is None:
            continue  # draft 4 has no "null default" semantics; omitting it changes nothing
        else:
            out[key] = _draft4(value)
    return out


def request_model_schema() -> dict[str, Any]:
    """The ``POST /query`` body schema for API Gateway: the core's request schema, in draft 4."""
    schema = _draft4(query_request_schema())
    schema.pop("description", None)
    return {"$schema": "http://json-schema.org/draft-04/schema#", **schema}
