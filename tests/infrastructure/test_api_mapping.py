"""The API Gateway request model and mapping templates generated from the core's contract."""

from __future__ import annotations

import json

import pytest
from shardrag.api_contract import GENERIC_MESSAGE
from shardrag.config import TenancySettings
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


ARN = "arn:aws:states:us-east-1:123456789012:stateMachine:q"
CLAIM = "$context.authorizer.claims['custom:tenant']"


def test_request_template_passes_the_body_as_the_request_and_an_empty_tenant_in_single_mode() -> None:
    template = api_mapping.request_template(ARN)
    assert f'"stateMachineArn": "{ARN}"' in template
    body = "$util.escapeJavaScript($input.json('$'))"
    assert f'"input": "{{\\"request\\": {body}' in template
    assert '\\"caller\\": {\\"tenant\\": \\"\\"}}"' in template
    assert "$context" not in template and "#" not in template


def test_request_template_reads_the_tenant_from_the_identity_and_escapes_it_twice() -> None:
    template = api_mapping.request_template(ARN, CLAIM)
    # Absent claim: an empty tenant (refused by the workflow in multi mode), never the reference's literal text.
    assert template.startswith(f'#set($tenant = "")\n#if({CLAIM})\n#set($tenant = {CLAIM})\n#end\n')
    # Once for the input's own JSON, once more because the input is a string inside the request JSON.
    assert template.count("$util.escapeJavaScript($tenant)") == 2
    assert '\\"tenant\\": \\"$util.escapeJavaScript($tenant)' in template
    # The body is passed as is: nothing reads a tenant from it.
    assert "$input.path" not in template and template.count("$input.json('$')") == 1


def test_tenant_reference_follows_the_tenancy_mode() -> None:
    single, multi = TenancySettings(), TenancySettings(mode="multi", claim="custom:tenant")
    assert all(api_mapping.tenant_reference(auth, single) is None for auth in ("iam", "api_key", "cognito"))
    assert api_mapping.tenant_reference("cognito", multi) == CLAIM
    for auth in ("iam", "api_key"):
        with pytest.raises(ValueError, match="needs auth 'cognito'"):
            api_mapping.tenant_reference(auth, multi)
    # A claim name that would end the VTL key and inject a directive is refused.
    with pytest.raises(ValueError, match=r"tenancy\.claim"):
        api_mapping.tenant_reference("cognito", TenancySettings(mode="multi", claim="x'] #set($tenant = 'a"))
