"""The offline policy checks: cdk-nag (AwsSolutions + Serverless) and cfn-lint on every environment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cdk_synthesis import Synthesis, synthesise

CFN_LINT = Path(sys.executable).with_name("cfn-lint")

#: Deployment variants the environments in cdk.json do not exercise (auth modes, WAF, alarm topic).
VARIANTS: dict[str, dict[str, Any]] = {
    "api_key": {"api": {"auth": "api_key", "quota_per_day": 10000}},
    "cognito": {
        "api": {
            "auth": "cognito",
            "cognito_user_pool_arn": "arn:aws:cognito-idp:us-east-1:123456789012:userpool/us-east-1_Abc123",
        },
        "alarms": {"topic_arn": "arn:aws:sns:us-east-1:123456789012:shardrag-alarms"},
        "workflow_log_level": "ERROR",
    },
    "waf": {"api": {"waf_web_acl_arn": "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/shardrag/0a1b2c3d"}},
    # Multi-tenant with the stack's own user pool (no cognito_user_pool_arn).
    "cognito_multi": {"api": {"auth": "cognito"}},
    # The Bedrock reranker in another Region than the stack's (settings below).
    "rerank": {},
}
#: Runtime settings overrides per variant (deep-merged into dev's settings section by section).
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "cognito_multi": {
        "tenancy": {"mode": "multi", "claim": "custom:tenant"},
        "ingestion": {"tenant_source": "key_prefix"},
    },
    "rerank": {
        "rerank": {"kind": "bedrock", "model_id": "cohere.rerank-v3-5:0", "region": "us-west-2", "timeout_s": 5}
    },
}


@pytest.fixture(scope="session")
def variants(synthesised: dict[str, Synthesis], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Synthesis]:
    """The dev environment with each variant's deployment overrides (after the main fixture: jsii is warm)."""
    from cdk_synthesis import CDK_CONTEXT

    results = {}
    for name, overrides in VARIANTS.items():
        dev = CDK_CONTEXT["environments"]["dev"]
        deployment = {**dev.get("deployment", {}), **overrides}
        settings = {**dev["settings"], **VARIANT_SETTINGS.get(name, {})}
        environments = {**CDK_CONTEXT["environments"], "dev": {**dev, "settings": settings, "deployment": deployment}}
        results[name] = synthesise("dev", tmp_path_factory.mktemp(f"cdk-{name}"), {"environments": environments})
    return results


def test_cdk_nag_has_no_unacknowledged_findings(synth: Synthesis) -> None:
    assert synth.violations == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cdk_nag_clean_for_every_auth_mode(variants: dict[str, Synthesis], variant: str) -> None:
    assert variants[variant].violations == []


def test_api_key_mode_adds_a_usage_plan(variants: dict[str, Synthesis]) -> None:
    synth = variants["api_key"]
    (plan,) = synth.properties("AWS::ApiGateway::UsagePlan")
    assert plan["Quota"] == {"Limit": 10000, "Period": "DAY"}
    assert len(synth.resources("AWS::ApiGateway::UsagePlanKey")) == 1
    (post,) = [m for m in synth.properties("AWS::ApiGateway::Method") if m["HttpMethod"] == "POST"]
    assert post["ApiKeyRequired"] is True


def test_cognito_mode_uses_the_configured_pool(variants: dict[str, Synthesis]) -> None:
    synth = variants["cognito"]
    (authorizer,) = synth.properties("AWS::ApiGateway::Authorizer")
    assert authorizer["Type"] == "COGNITO_USER_POOLS"
    assert authorizer["ProviderARNs"] == [VARIANTS["cognito"]["api"]["cognito_user_pool_arn"]]
    assert all(a["AlarmActions"] for a in synth.properties("AWS::CloudWatch::Alarm"))


def test_multi_tenant_cognito_maps_the_claim_from_a_pool_with_an_immutable_tenant(
    variants: dict[str, Synthesis],
) -> None:
    synth = variants["cognito_multi"]
    (pool,) = synth.properties("AWS::Cognito::UserPool")
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True  # nobody signs up, picking a tenant
    (tenant,) = [a for a in pool["Schema"] if a["Name"] == "tenant"]
    assert tenant["Mutable"] is False
    (client,) = synth.properties("AWS::Cognito::UserPoolClient")
    assert not client.get("WriteAttributes")
    (authorizer,) = synth.properties("AWS::ApiGateway::Authorizer")
    assert authorizer["Type"] == "COGNITO_USER_POOLS"
    assert authorizer["ProviderARNs"] == [
        {"Fn::GetAtt": [next(iter(synth.resources("AWS::Cognito::UserPool"))), "Arn"]}
    ]
    (post,) = [m for m in synth.properties("AWS::ApiGateway::Method") if m["HttpMethod"] == "POST"]
    assert post["AuthorizationType"] == "COGNITO_USER_POOLS"
    assert not post.get("AuthorizationScopes")  # scopes would make API Gateway expect an access token: no claim
    template = json.dumps(post["Integration"]["RequestTemplates"]["application/json"])
    assert json.dumps("#set($tenant = $context.authorizer.claims['custom:tenant'])")[1:-1] in template


def test_single_tenant_sends_an_empty_tenant(variants: dict[str, Synthesis]) -> None:
    (post,) = [m for m in variants["cognito"].properties("AWS::ApiGateway::Method") if m["HttpMethod"] == "POST"]
    template = json.dumps(post["Integration"]["RequestTemplates"]["application/json"])
    assert "$context.authorizer" not in template
    assert json.dumps('\\"caller\\": {\\"tenant\\": \\"\\"}}')[1:-1] in template


def test_waf_variant_associates_the_web_acl(variants: dict[str, Synthesis]) -> None:
    (association,) = variants["waf"].properties("AWS::WAFv2::WebACLAssociation")
    assert association["WebACLArn"] == VARIANTS["waf"]["api"]["waf_web_acl_arn"]


def test_rerank_variant_may_rerank_with_the_configured_model_only(variants: dict[str, Synthesis]) -> None:
    synth = variants["rerank"]
    (fuse,) = [
        f["Properties"]
        for f in synth.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Description") == "ShardRAG fuse_generate"
    ]
    role = fuse["Role"]["Fn::GetAtt"][0]
    granted: dict[str, list[Any]] = {}
    for policy in synth.properties("AWS::IAM::Policy"):
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                if action.startswith("bedrock:"):
                    assert policy["Roles"] == [{"Ref": role}], statement  # FuseAndGenerate's role, nobody else's
                    granted.setdefault(action, []).append(statement["Resource"])
    assert granted["bedrock:Rerank"] == ["*"]
    model = json.dumps(granted["bedrock:InvokeModel"])
    assert ":bedrock:us-west-2::foundation-model/cohere.rerank-v3-5:0" in model
    # The failed-rerank warning is counted from the function's log group.
    (metric_filter,) = synth.properties("AWS::Logs::MetricFilter")
    assert metric_filter["FilterPattern"] == '"rerank failed"'
    assert metric_filter["LogGroupName"] == {"Ref": fuse["LoggingConfig"]["LogGroup"]["Ref"]}
    assert metric_filter["MetricTransformations"][0]["MetricName"] == "RerankFailures"


@pytest.mark.skipif(not CFN_LINT.exists() and not shutil.which("cfn-lint"), reason="cfn-lint not installed")
def test_cfn_lint_reports_no_errors(synthesised: dict[str, Synthesis], variants: dict[str, Synthesis]) -> None:
    # One cfn-lint run for every template: it starts in ~1 s, lints in well under one.
    files = [str(s.template_file) for s in [*synthesised.values(), *variants.values()]]
    command = [str(CFN_LINT) if CFN_LINT.exists() else "cfn-lint", "--non-zero-exit-code", "error", *files]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
