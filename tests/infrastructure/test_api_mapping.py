"""The API Gateway request model and mapping templates generated from the core's contract."""

from __future__ import annotations

import json

from shardrag.api_contract import GENERIC_MESSAGE
from shardrag.errors import ERROR_STATUS
from shardrag.request import query_request_schema
from shardrag_cdk import api_mapping


def test_request_model_is_draft4_and_keeps_the_core_constraints() -> None:
    schema = api_mapping.request_model_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    text = json.dumps(schema)
    assert "$defs" not in text and '"const"' not in text
    core = query_request_schema()
    assert schema["required"] == core["required"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["question"]["maxLength"] == core["properties"]["question"]["maxLength"]


def test_draft4_rewrites_newer_keywords() -> None:
    converted = api_mapping._draft4(
        {"$defs": {"A": {"const": 1}}, "x": {"$ref": "#/$defs/A"}, "n": {"exclusiveMinimum": 0, "default": None}}
    )
    assert converted == {
        "definitions": {"A": {"enum": [1]}},
        "x": {"$ref": "#/definitions/A"},
        "n": {"minimum": 0, "exclusiveMinimum": True},
    }


def test_response_template_has_a_branch_per_known_error_and_a_generic_fallback() -> None:
    template = api_mapping.response_template()
    for name, (status, code) in ERROR_STATUS.items():
        assert f'#if($error == "{name}")' in template or f'#elseif($error == "{name}")' in template
        assert f"#set($context.responseOverride.status = {status})" in template
        assert f'#set($code = "{code}")' in template
    assert GENERIC_MESSAGE in template
    assert "#set($context.responseOverride.status = 504)" in template  # TIMED_OUT
    # Directives balance: every #if closes.
    assert template.count("#if(") == template.count("#end")


def test_request_template_passes_the_body_as_the_execution_input() -> None:
    template = api_mapping.request_template("arn:aws:states:us-east-1:123456789012:stateMachine:q")
    assert '"stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:q"' in template
    assert "$util.escapeJavaScript($input.json('$'))" in template
