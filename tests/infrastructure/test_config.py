"""A bad configuration stops synthesis with a message that names the environment and the field."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cdk_synthesis import CDK_CONTEXT, ROOT
from shardrag_cdk.config import DeploymentConfigError, load_environment


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _environments(**changes: Any) -> dict[str, Any]:
    """cdk.json's environments with dev's sections deep-updated (lists and scalars replaced)."""
    environments = copy.deepcopy(CDK_CONTEXT["environments"])
    environments["dev"] = _merge(environments["dev"], changes)
    return environments


POOL = "arn:aws:cognito-idp:us-east-1:123456789012:userpool/us-east-1_Abc123"
MULTI = {"tenancy": {"mode": "multi"}, "ingestion": {"tenant_source": "key_prefix"}}
#: Cognito with the stack's own user pool (no cognito_user_pool_arn).
COGNITO = {"auth": "cognito"}


def test_every_environment_validates() -> None:
    for name in CDK_CONTEXT["environments"]:
        config = load_environment(CDK_CONTEXT["environments"], name)
        assert config.settings.environment == name
        assert len(config.settings.store.shards) == config.settings.store.shard_count


@pytest.mark.parametrize(
    ("environments", "name", "expected"),
    [
        (CDK_CONTEXT["environments"], "staging", "unknown environment 'staging' (known: dev, prod)"),
        (CDK_CONTEXT["environments"], None, "choose an environment with -c env=<name>"),
        (None, "dev", "no 'environments' mapping"),
        (_environments(deployment={"api": {"auth": "basic"}}), "dev", "deployment.api.auth"),
        (_environments(deployment={"api": {"auth": "iam", "cognito_user_pool_arn": POOL}}), "dev", "but auth is 'iam'"),
        (_environments(settings=MULTI), "dev", "API Gateway does not expose an IAM caller's principal tags"),
        (
            _environments(settings=MULTI, deployment={"api": {"auth": "api_key"}}),
            "dev",
            "an API key identifies a client for throttling and quotas, not a tenant",
        ),
        (
            _environments(
                settings={
                    "tenancy": {"mode": "multi", "claim": "tenant']) #set($x = 1"},
                    "ingestion": {"tenant_source": "key_prefix"},
                },
                deployment={"api": {"auth": "cognito", "cognito_user_pool_arn": POOL}},
            ),
            "dev",
            "settings.tenancy.claim",
        ),
        (
            _environments(
                settings={
                    "tenancy": {"mode": "multi", "claim": "tenant"},
                    "ingestion": {"tenant_source": "key_prefix"},
                },
                deployment={"api": COGNITO},
            ),
            "dev",
            "the claim must be 'custom:<name>'",
        ),
        (
            _environments(
                settings={
                    "tenancy": {"mode": "multi", "claim": "custom:a_tenant_attribute_name"},
                    "ingestion": {"tenant_source": "key_prefix"},
                },
                deployment={"api": COGNITO},
            ),
            "dev",
            "the claim must be 'custom:<name>'",
        ),
        (_environments(settings={"store": {"shard_count": 3}}), "dev", "lists 4 endpoints but store.shard_count is 3"),
        (_environments(settings={"retrieval": {"top_k": 0}}), "dev", "settings.retrieval.top_k"),
        (
            _environments(settings={"store": {"shard_count": 2, "shards": [{"uri": "a.db"}, {"uri": "b.db"}]}}),
            "dev",
            "Milvus Lite",
        ),
        (_environments(settings={"store": {"shards": []}}), "dev", "must list one Milvus endpoint per shard"),
        (_environments(deployment={"log_retention_days": 10}), "dev", "deployment.log_retention_days"),
        (
            _environments(
                deployment={"functions": {"ingest": {"timeout_s": 900}}, "ingestion": {"visibility_timeout_factor": 50}}
            ),
            "dev",
            "exceeds SQS's 12 h maximum",
        ),
        (_environments(deployment={"ingestion": {"visibility_timeout_factor": 2}}), "dev", "visibility_timeout_factor"),
        (
            _environments(
                deployment={"functions": {"embed": {"reserved_concurrency": 2, "provisioned_concurrency": 5}}}
            ),
            "dev",
            "exceeds reserved_concurrency",
        ),
        (
            _environments(
                deployment={
                    "vpc": {"vpc_id": "vpc-1", "subnet_ids": [], "availability_zones": [], "security_group_ids": []}
                }
            ),
            "dev",
            "deployment.vpc",
        ),
        (_environments(settings={"generator": {"kind": "openai"}}), "dev", "needs settings.generator.endpoint_url"),
        (
            _environments(settings={"rerank": {"kind": "bedrock", "timeout_s": 25}}),
            "dev",
            "settings.rerank.timeout_s (25s) must be below deployment.functions.fuse_generate.timeout_s (25s)",
        ),
        (_environments(unexpected={"x": 1}), "dev", "unexpected"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(environments: Any, name: str | None, expected: str) -> None:
    with pytest.raises(DeploymentConfigError) as caught:
        load_environment(environments, name)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("api", "claim", "attribute"),
    [
        (COGNITO, "custom:tenant", "tenant"),  # the stack's pool declares the attribute
        ({**COGNITO, "cognito_user_pool_arn": POOL}, "custom:tenant", None),  # an existing pool: declares its own
        ({**COGNITO, "cognito_user_pool_arn": POOL}, "tenant_id", None),  # and may issue any claim name
    ],
)
def test_multi_tenant_cognito_is_deployable(api: dict[str, Any], claim: str, attribute: str | None) -> None:
    config = load_environment(
        _environments(
            settings={"tenancy": {"mode": "multi", "claim": claim}, "ingestion": {"tenant_source": "key_prefix"}},
            deployment={"api": api},
        ),
        "dev",
    )
    assert config.settings.tenancy.mode == "multi"
    assert config.tenant_attribute() == attribute


def test_single_tenant_needs_no_tenant_attribute() -> None:
    for auth in ("iam", "api_key", "cognito"):
        config = load_environment(_environments(deployment={"api": {"auth": auth}}), "dev")
        assert config.tenant_attribute() is None


def test_bad_config_stops_the_app_build(synthesised: Any) -> None:
    """The same error from the app entry point (jsii is already running thanks to ``synthesised``)."""
    from aws_cdk import App
    from shardrag_cdk.application import build

    app = App(
        context={**CDK_CONTEXT, "environments": _environments(deployment={"api": {"auth": "basic"}}), "env": "dev"}
    )
    with pytest.raises(DeploymentConfigError, match=r"invalid configuration for environment 'dev'"):
        build(app)


@pytest.mark.skipif(
    not (ROOT / "node_modules" / ".bin" / "cdk").exists(), reason="npm ci has not installed the CDK CLI"
)
def test_cdk_cli_reports_an_unknown_environment(tmp_path: Path) -> None:
    """What a user sees: `cdk synth -c env=typo` fails fast and says which environments exist."""
    env = {**os.environ, "CDK_DISABLE_VERSION_CHECK": "1", "CDK_DISABLE_CLI_TELEMETRY": "true"}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / "cdk"), "synth", "-c", "env=typo", "--no-notices", "-o", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "unknown environment 'typo' (known: dev, prod)" in result.stderr
