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

EXTERNAL_PUBLIC: dict[str, Any] = {
    "kind": "external",
    "endpoints": [
        {
            "uri": "https://in03-0123456789abcdef.serverless.aws-eu-central-1.cloud.zilliz.com",
            "token_secret": "zilliz/dev",
        }
    ],
}
#: One endpoint per shard of dev (4), behind an AWS PrivateLink endpoint service, in an existing VPC.
EXTERNAL_PRIVATELINK: dict[str, Any] = {
    "kind": "external",
    "endpoints": [
        {"uri": f"https://milvus-{i}.corp.example:19530", "token_secret": f"milvus/shard-{i}", "ca_secret": "milvus/ca"}
        for i in range(4)
    ],
    "private_link_service": "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
    "private_link_port": 19530,
}
DISTRIBUTED: dict[str, Any] = {
    "kind": "distributed",
    "certificate_arn": "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
    "server_name": "milvus.corp.example",
}
IMPORTED_VPC: dict[str, Any] = {
    "vpc_id": "vpc-0123456789abcdef0",
    "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
    "availability_zones": ["us-east-1a", "us-east-1b"],
    "route_table_ids": ["rtb-0123456789abcdef0", "rtb-0fedcba9876543210"],
}

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
    # Store kinds and networks cdk.json's environments do not use.
    "external_public": {"store": EXTERNAL_PUBLIC, "network": None},
    "external_privatelink": {"store": EXTERNAL_PRIVATELINK, "network": {"imported": IMPORTED_VPC}},
    "nat": {"network": {"nat_gateways": 1}},
    "distributed": {"store": DISTRIBUTED, "network": {"nat_gateways": 1}},
}
#: Runtime settings overrides per variant (deep-merged into dev's settings section by section).
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    # Zilliz Cloud picks its own index: AUTOINDEX is accepted.
    "external_public": {"store": {"shard_count": 4, "index": {"type": "AUTOINDEX"}}},
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
    (post,) = [
        m
        for m in synth.properties("AWS::ApiGateway::Method")
        if m["HttpMethod"] == "POST" and m["Integration"]["Type"] != "AWS_PROXY"
    ]
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
    (post,) = [
        m
        for m in synth.properties("AWS::ApiGateway::Method")
        if m["HttpMethod"] == "POST" and m["Integration"]["Type"] != "AWS_PROXY"
    ]
    assert post["AuthorizationType"] == "COGNITO_USER_POOLS"
    assert not post.get("AuthorizationScopes")  # scopes would make API Gateway expect an access token: no claim
    template = json.dumps(post["Integration"]["RequestTemplates"]["application/json"])
    assert json.dumps("#set($tenant = $context.authorizer.claims['custom:tenant'])")[1:-1] in template


def test_single_tenant_sends_an_empty_tenant(variants: dict[str, Synthesis]) -> None:
    (post,) = [
        m
        for m in variants["cognito"].properties("AWS::ApiGateway::Method")
        if m["HttpMethod"] == "POST" and m["Integration"]["Type"] != "AWS_PROXY"
    ]
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
                if action.startswith("bedrock:") and policy["Roles"] != [{"Ref": role}]:
                    # The chat front's answer role reaches the generator (streamed), never the reranker.
                    assert "ChatAnswerRole" in policy["Roles"][0]["Ref"] and "Rerank" not in action, statement
                elif action.startswith("bedrock:"):
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


def _function_props(synth: Synthesis, name: str) -> dict[str, Any]:
    (props,) = [
        f["Properties"]
        for f in synth.resources("AWS::Lambda::Function").values()
        if f["Properties"].get("Description") == f"ShardRAG {name}"
    ]
    return props


def _shards(synth: Synthesis) -> list[dict[str, Any]]:
    """The shard endpoints the runtime derives from the settings the stack gives shard_search."""
    from shardrag.config import Settings
    from test_template import _text

    variables = _function_props(synth, "shard_search")["Environment"]["Variables"]
    settings = Settings.model_validate(json.loads(_text(variables["SHARDRAG_SETTINGS"])))
    return [e.model_dump() for e in settings.shard_endpoints()]


def test_external_store_over_the_internet_needs_no_vpc_and_runs_nothing(variants: dict[str, Synthesis]) -> None:
    synth = variants["external_public"]
    assert not synth.resources("AWS::EC2::Instance") and not synth.resources("AWS::EC2::VPC")
    assert "VpcConfig" not in _function_props(synth, "shard_search")
    shards = _shards(synth)
    (endpoint,) = EXTERNAL_PUBLIC["endpoints"]
    assert [s["collection"] for s in shards] == [f"shardrag_chunks_shard{i}" for i in range(4)]
    assert {s["uri"] for s in shards} == {endpoint["uri"]}
    assert {s["token_secret"] for s in shards} == {"zilliz/dev"}
    assert json.loads(_function_props(synth, "ingest")["Environment"]["Variables"]["SHARDRAG_SETTINGS"])["store"][
        "index"
    ] == {"type": "AUTOINDEX"}


def test_external_store_with_privatelink_in_an_imported_vpc(variants: dict[str, Synthesis]) -> None:
    synth = variants["external_privatelink"]
    assert not synth.resources("AWS::EC2::VPC")  # imported, not created
    endpoints = {json.dumps(e["ServiceName"]): e for e in synth.properties("AWS::EC2::VPCEndpoint")}
    private_link = endpoints[json.dumps(EXTERNAL_PRIVATELINK["private_link_service"])]
    assert private_link["VpcEndpointType"] == "Interface" and private_link["PrivateDnsEnabled"] is True
    assert private_link["SubnetIds"] == IMPORTED_VPC["subnet_ids"]
    gateways = [e for e in endpoints.values() if e.get("VpcEndpointType", "Gateway") == "Gateway"]
    assert len(gateways) == 2
    assert all(sorted(g["RouteTableIds"]) == sorted(IMPORTED_VPC["route_table_ids"]) for g in gateways)
    # One endpoint per shard, same collection; each shard's secrets readable by the Milvus functions only.
    shards = _shards(synth)
    assert [s["uri"] for s in shards] == [e["uri"] for e in EXTERNAL_PRIVATELINK["endpoints"]]
    assert {s["collection"] for s in shards} == {"shardrag_chunks"}  # the default, on each shard's own endpoint
    secrets = json.dumps(
        [
            s
            for p in synth.properties("AWS::IAM::Policy")
            for s in p["PolicyDocument"]["Statement"]
            if "secretsmanager:GetSecretValue" in s["Action"]
        ]
    )
    for name in [f"milvus/shard-{i}" for i in range(4)] + ["milvus/ca"]:
        assert f":secret:{name}-??????" in secrets


def test_a_configured_nat_replaces_the_interface_endpoints(variants: dict[str, Synthesis]) -> None:
    synth = variants["nat"]
    assert len(synth.resources("AWS::EC2::NatGateway")) == 1
    kinds = [e.get("VpcEndpointType", "Gateway") for e in synth.properties("AWS::EC2::VPCEndpoint")]
    assert kinds == ["Gateway", "Gateway"]  # S3 and DynamoDB stay free and private


def test_distributed_store_runs_the_pinned_chart_on_graviton_nodes_with_pod_identity(
    variants: dict[str, Synthesis],
) -> None:
    synth = variants["distributed"]
    assert not synth.resources("AWS::EC2::Instance")
    (cluster,) = synth.properties("AWS::EKS::Cluster")
    assert cluster["Version"] == "1.33"
    (nodes,) = synth.properties("AWS::EKS::Nodegroup")
    assert nodes["AmiType"] == "AL2023_ARM_64_STANDARD" and nodes["InstanceTypes"] == ["m7g.xlarge"]
    (chart,) = [
        c for c in synth.resources("Custom::AWSCDK-EKS-HelmChart").values() if c["Properties"]["Chart"] == "milvus"
    ]
    props = chart["Properties"]
    assert (props["Repository"], props["Version"], props["Namespace"]) == (
        "https://zilliztech.github.io/milvus-helm/",
        "5.0.19",
        "milvus",
    )
    values = json.dumps(props["Values"])
    assert "{{resolve:secretsmanager:" in values  # the password is a dynamic reference, never a literal
    assert "aws-load-balancer-scheme" in values and DISTRIBUTED["certificate_arn"] in values
    associations = synth.properties("AWS::EKS::PodIdentityAssociation")
    assert {(a["Namespace"], a["ServiceAccount"]) for a in associations} >= {("milvus", "milvus")}
    shards = _shards(synth)
    assert all(s["server_name"] == "milvus.corp.example" and s["ca_secret"] is None for s in shards)
    assert all(s["uri"] == "https://<ref>:19530" for s in shards)  # the load balancer's name, at deploy
