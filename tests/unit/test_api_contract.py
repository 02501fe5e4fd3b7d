from __future__ import annotations

import json
from pathlib import Path

import pytest
from shardrag.api_contract import GENERIC_MESSAGE, map_execution
from shardrag.openapi import openapi_document


def _cause(error: str, message: str) -> str:
    return json.dumps({"errorType": error, "errorMessage": message, "stackTrace": ["File secret.py line 1"]})


def test_success_passes_the_output_through() -> None:
    status, body = map_execution({"status": "SUCCEEDED", "output": json.dumps({"answer": "a"})})
    assert status == 200 and body == {"answer": "a"}


def test_known_errors_map_to_their_status_without_stack_traces() -> None:
    for error, expected in [("BadRequest", 400), ("ShardsUnavailable", 503), ("GenerationFailed", 502)]:
        status, body = map_execution({"status": "FAILED", "error": error, "cause": _cause(error, "why")})
        assert status == expected
        assert body["error"]["message"] == "why"
        assert "secret.py" not in json.dumps(body)


def test_unknown_errors_are_500_with_a_generic_message() -> None:
    status, body = map_execution({"status": "FAILED", "error": "KeyError", "cause": _cause("KeyError", "'x' in /src")})
    assert status == 500 and body == {"error": {"code": "internal_error", "message": GENERIC_MESSAGE}}


@pytest.mark.parametrize("name", ["ConfigurationError", "WiringError"])
def test_wiring_and_configuration_errors_are_generic_500s_without_their_message(name: str) -> None:
    # Their messages name secrets, paths and payload shapes; and a malformed state payload is never the caller's
    # fault (it used to be a 400).
    cause = json.dumps({"errorType": name, "errorMessage": "cannot read secret 'shardrag/prod/milvus' at /var/task"})
    status, body = map_execution({"status": "FAILED", "error": name, "cause": cause})
    assert status == 500 and body["error"]["code"] == "internal_error"
    assert "secret" not in json.dumps(body) and "/var/task" not in json.dumps(body)


def test_timeout_is_504() -> None:
    assert map_execution({"status": "TIMED_OUT"})[0] == 504


def test_committed_openapi_document_is_current() -> None:
    committed = json.loads((Path(__file__).resolve().parents[2] / "openapi.json").read_text())
    assert committed == openapi_document(), "run `make openapi` and commit openapi.json"
