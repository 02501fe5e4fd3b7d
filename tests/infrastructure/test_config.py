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


def _store(store: dict[str, Any]) -> dict[str, Any]:
    """cdk.json's environments with dev's ``deployment.store`` replaced (not merged) by ``store``."""
    environments = _environments()
    environments["dev"]["deployment"]["store"] = store
    del environments["dev"]["deployment"]["network"]  # the default that goes with the store kind
    return environments


CERT = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"
PRIVATE_LINK = "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0"
POOL = "arn:aws:cognito-idp:us-east-1:123456789012:userpool/us-east-1_Abc123"
MULTI = {"tenancy": {"mode": "multi"}, "ingestion": {"tenant_source": "key_prefix"}}
#: Cognito with the stack's own user pool (no cognito_user_pool_arn).
COGNITO = {"auth": "cognito"}


def test_every_environment_validates() -> None:
    for name in CDK_CONTEXT["environments"]:
        config = load_environment(CDK_CONTEXT["environments"], name)
        assert config.settings.environment == name
        # The stack wires the shards to the store it provisions: nothing is typed by hand.
        assert config.settings.store.shards == ()
        assert config.deployment.store.kind in ("standalone", "distributed", "external")


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
        (_environments(settings={"retrieval": {"top_k": 0}}), "dev", "settings.retrieval.top_k"),
        (
            _environments(
                settings={
                    "store": {"shard_count": 2, "shards": [{"uri": "https://a:19530"}, {"uri": "https://b:19530"}]}
                }
            ),
            "dev",
            "settings.store.shards / store.endpoint are produced by the stack",
        ),
        (
            _store({"kind": "external", "endpoints": [{"uri": "https://a"}] * 3}),
            "dev",
            "lists 3 endpoints: give one",
        ),
        (
            _store({"kind": "external", "endpoints": [{"uri": "http://a:19530", "token_secret": "t"}]}),
            "dev",
            "must use https://",
        ),
        (_environments(deployment={"store": {"kind": "standalone", "instance_type": "t3.large"}}), "dev", "Graviton"),
        (_environments(deployment={"store": {"kind": "standalone", "instance_type": "t4g.small"}}), "dev", "Graviton"),
        (_store({"kind": "cassandra"}), "dev", "deployment.store"),
        (
            _store({"kind": "distributed", "certificate_arn": CERT, "server_name": "milvus.corp.example"}),
            "dev",
            "store kind 'distributed' needs a NAT",
        ),
        (_store({"kind": "distributed", "server_name": "milvus.corp.example"}), "dev", "certificate_arn"),
        (
            _store({"kind": "external", "endpoints": [{"uri": "https://a"}], "private_link_service": PRIVATE_LINK}),
            "dev",
            "store.private_link_service needs deployment.network",
        ),
        (
            _environments(deployment={"network": {"functions": ["ingest"]}}),
            "dev",
            "network.functions must include ['feedback', 'shard_search']",
        ),
        # Feedback reads and searches the shards like ShardSearch: outside the VPC it could not reach the store.
        (
            _environments(deployment={"network": {"functions": ["shard_search", "ingest"]}}),
            "dev",
            "network.functions must include ['feedback']",
        ),
        (
            _environments(
                deployment={
                    "network": {
                        "imported": {
                            "vpc_id": "vpc-0123456789abcdef0",
                            "subnet_ids": ["subnet-01234567"],
                            "availability_zones": ["us-east-1a", "us-east-1b"],
                            "route_table_ids": ["rtb-01234567"],
                        }
                    }
                }
            ),
            "dev",
            "one entry per subnet id",
        ),
        # A default account: 1,000, of which 100 stay unreserved.
        (
            _environments(deployment={"functions": {"shard_search": {"reserved_concurrency": 901}}}),
            "dev",
            "reserved concurrency adds up to 901 (shard_search 901) but an account with account_concurrency_limit "
            "1000 can reserve at most 900",
        ),
        (
            _environments(
                deployment={
                    "account_concurrency_limit": 3000,
                    "functions": {"embed": {"reserved_concurrency": 2000}, "ingest": {"reserved_concurrency": 901}},
                }
            ),
            "dev",
            "adds up to 2901",
        ),
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
        (_environments(deployment={"vpc": {"vpc_id": "vpc-1"}}), "dev", "deployment.vpc"),
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


def test_reserved_concurrency_up_to_the_account_limit_is_accepted() -> None:
    functions = {"shard_search": {"reserved_concurrency": 880}, "ingest": {"reserved_concurrency": 20}}
    config = load_environment(_environments(deployment={"functions": functions}), "dev")
    assert config.deployment.functions.shard_search.reserved_concurrency == 880
    raised = {**functions, "embed": {"reserved_concurrency": 1000}}
    config = load_environment(_environments(deployment={"functions": raised, "account_concurrency_limit": 2000}), "dev")
    assert config.deployment.account_concurrency_limit == 2000


def test_provisioned_concurrency_is_off_unless_configured() -> None:
    for name in CDK_CONTEXT["environments"]:
        functions = load_environment(CDK_CONTEXT["environments"], name).deployment.functions
        assert all(functions.of(f).provisioned_concurrency == 0 for f in ("embed", "route", "shard_search"))


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
