"""The Milvus Helm chart's values for the ``distributed`` store: a pure function, checked against the chart's keys."""

from __future__ import annotations

from typing import Any

import pytest
from shardrag_cdk.milvus_helm import SERVICE_ACCOUNT, helm_values
from shardrag_cdk.store_config import MILVUS_CHART_APP_VERSION, DistributedStoreConfig

CERTIFICATE = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"


def _values(**changes: Any) -> dict[str, Any]:
    config = DistributedStoreConfig(certificate_arn=CERTIFICATE, server_name="milvus.corp.example", **changes)
    return helm_values(
        config,
        bucket="shardrag-milvus",
        region="eu-west-1",
        root_password="{{resolve:secretsmanager:arn:x:SecretString:password}}",
        certificate_arn=CERTIFICATE,
        source_cidrs=["10.64.0.0/16"],
    )


def test_cluster_mode_with_the_charts_own_release_pinned() -> None:
    values = _values()
    assert values["cluster"] == {"enabled": True}
    assert values["image"]["all"]["tag"] == MILVUS_CHART_APP_VERSION == "v2.6.15"


def test_object_storage_is_the_stacks_bucket_through_iam_without_keys() -> None:
    values = _values()
    assert values["minio"] == {"enabled": False}
    s3 = values["externalS3"]
    assert s3["enabled"] is True and s3["useIAM"] is True and s3["cloudProvider"] == "aws"
    assert (s3["host"], s3["port"], s3["useSSL"]) == ("s3.eu-west-1.amazonaws.com", 443, True)
    assert s3["bucketName"] == "shardrag-milvus" and s3["region"] == "eu-west-1"
    assert s3["accessKey"] == "" and s3["secretKey"] == ""
    assert values["serviceAccount"] == {"create": False, "name": SERVICE_ACCOUNT}  # the stack's, with Pod Identity


def test_proxy_sits_behind_an_internal_tls_load_balancer_open_to_the_vpc_only() -> None:
    service = _values()["service"]
    assert service["type"] == "LoadBalancer" and service["port"] == 19530
    annotations = service["annotations"]
    prefix = "service.beta.kubernetes.io/aws-load-balancer-"
    assert annotations[prefix + "scheme"] == "internal"
    assert annotations[prefix + "ssl-cert"] == CERTIFICATE
    assert annotations[prefix + "ssl-ports"] == "19530"
    assert annotations[prefix + "alpn-policy"] == "HTTP2Preferred"  # gRPC needs h2 through the TLS listener
    assert service["loadBalancerSourceRanges"] == ["10.64.0.0/16"]  # the chart's default is 0.0.0.0/0


def test_authentication_uses_the_generated_password() -> None:
    user_yaml = _values()["extraConfigFiles"]["user.yaml"]
    assert "authorizationEnabled: true" in user_yaml
    assert 'defaultRootPassword: "{{resolve:secretsmanager:arn:x:SecretString:password}}"' in user_yaml


@pytest.mark.parametrize(("field", "key"), [("query_node_replicas", "queryNode"), ("proxy_replicas", "proxy")])
def test_replicas_follow_the_config(field: str, key: str) -> None:
    assert _values(**{field: 5})[key]["replicas"] == 5


def test_values_only_use_keys_the_chart_declares() -> None:
    # Top-level keys of charts/milvus/values.yaml at 5.0.19 that these values set (a typo would be ignored by Helm).
    chart_keys = {
        "cluster", "image", "serviceAccount", "service", "extraConfigFiles", "proxy", "queryNode", "dataNode",
        "minio", "externalS3", "metrics",
    }  # fmt: skip
    assert set(_values()) <= chart_keys
