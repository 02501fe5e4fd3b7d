"""The offline policy checks: cdk-nag (AwsSolutions + Serverless) and cfn-lint on every environment."""

from __future__ import annotations

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
}


@pytest.fixture(scope="session")
def variants(synthesised: dict[str, Synthesis], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Synthesis]:
    """The dev environment with each variant's deployment overrides (after the main fixture: jsii is warm)."""
    from cdk_synthesis import CDK_CONTEXT

    results = {}
    for name, overrides in VARIANTS.items():
        dev = CDK_CONTEXT["environments"]["dev"]
        deployment = {**dev.get("deployment", {}), **overrides}
        environments = {**CDK_CONTEXT["environments"], "dev": {**dev, "deployment": deployment}}
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


def test_waf_variant_associates_the_web_acl(variants: dict[str, Synthesis]) -> None:
    (association,) = variants["waf"].properties("AWS::WAFv2::WebACLAssociation")
    assert association["WebACLArn"] == VARIANTS["waf"]["api"]["waf_web_acl_arn"]


@pytest.mark.skipif(not CFN_LINT.exists() and not shutil.which("cfn-lint"), reason="cfn-lint not installed")
def test_cfn_lint_reports_no_errors(synthesised: dict[str, Synthesis], variants: dict[str, Synthesis]) -> None:
    # One cfn-lint run for every template: it starts in ~1 s, lints in well under one.
    files = [str(s.template_file) for s in [*synthesised.values(), *variants.values()]]
    command = [str(CFN_LINT) if CFN_LINT.exists() else "cfn-lint", "--non-zero-exit-code", "error", *files]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
