"""The HTTP contract shared by the local API and the API Gateway mapping: how a StartSyncExecution result
becomes a status code and a body."""

from __future__ import annotations

import json
from typing import Any

from shardrag.errors import ERROR_STATUS

GENERIC_MESSAGE = "internal error; see the service logs for the execution"


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _cause_message(cause: str | None) -> str:
    """The Lambda ``errorMessage`` inside a Step Functions cause, never its stack trace."""
    if not cause:
        return ""
    try:
        parsed = json.loads(cause)
    except ValueError:
        return cause[:500]
    if isinstance(parsed, dict):
        return str(parsed.get("errorMessage", ""))[:500]
    return ""


def map_execution(result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` for a StartSyncExecution response (``status``, ``output``, ``error``, ``cause``)."""
    status = result.get("status")
    if status == "SUCCEEDED":
        output = result.get("output")
        return 200, json.loads(output) if isinstance(output, str) else dict(output or {})
    if status == "TIMED_OUT":
        return 504, error_body("timeout", "the query workflow timed out")
    error = str(result.get("error") or "")
    if error in ERROR_STATUS:
        http_status, code = ERROR_STATUS[error]
        return http_status, error_body(code, _cause_message(result.get("cause")) or error)
    return 500, error_body("internal_error", GENERIC_MESSAGE)
