"""Values for the official Milvus Helm chart (zilliztech/milvus-helm ``charts/milvus``), as one pure function.

What the ``distributed`` store needs from the chart (keys as in the chart's ``values.yaml`` at version 5.0.19):

* cluster mode, the chart's Milvus release pinned (``image.all.tag``);
* object storage in the stack's S3 bucket through the pods' IAM identity (``externalS3.useIAM``; the bundled MinIO
  off), the chart's etcd and its default message queue (Woodpecker, embedded in the streaming node) kept;
* authentication with the generated root password (``extraConfigFiles.user.yaml``);
* the proxy behind an internal Network Load Balancer (AWS Load Balancer Controller annotations) that terminates TLS
  with the configured ACM certificate and speaks HTTP/2 to clients (gRPC needs ALPN h2);
* one service account, bound to the pods' IAM role by EKS Pod Identity.

No CDK import: the unit tests call it directly.
"""

from __future__ import annotations

from typing import Any, Final

from shardrag_cdk.store_config import MILVUS_PORT, DistributedStoreConfig

#: The service account the Milvus pods run as (EKS Pod Identity associates the IAM role with it).
SERVICE_ACCOUNT: Final = "milvus"
NAMESPACE: Final = "milvus"
RELEASE: Final = "shardrag"


def helm_values(
    config: DistributedStoreConfig,
    *,
    bucket: str,
    region: str,
    root_password: str,
    certificate_arn: str,
    source_cidrs: list[str],
    subnet_ids: list[str] | None = None,
) -> dict[str, Any]:
    """The chart's values for ``config``. ``root_password`` may be a deploy-time reference (a CloudFormation dynamic
    reference to the generated secret), never a literal from the repository."""
    lb = "service.beta.kubernetes.io/aws-load-balancer-"
    annotations: dict[str, str] = {
        f"{lb}type": "external",  # the AWS Load Balancer Controller, not the legacy in-tree provider
        f"{lb}scheme": "internal",
        f"{lb}nlb-target-type": "ip",
        f"{lb}ssl-cert": certificate_arn,
        f"{lb}ssl-ports": str(MILVUS_PORT),
        f"{lb}alpn-policy": "HTTP2Preferred",
        f"{lb}backend-protocol": "tcp",
    }
    if subnet_ids:
        annotations[f"{lb}subnets"] = ",".join(subnet_ids)
    user_yaml = "\n".join(
        [
            "common:",
            "  security:",
            "    authorizationEnabled: true",
            f'    defaultRootPassword: "{root_password}"',
            "",
        ]
    )
    return {
        "cluster": {"enabled": True},
        "image": {"all": {"repository": "milvusdb/milvus", "tag": config.milvus_version}},
        # Created by the stack with its Pod Identity association; the chart only uses it.
        "serviceAccount": {"create": False, "name": SERVICE_ACCOUNT},
        "service": {
            "type": "LoadBalancer",
            "port": MILVUS_PORT,
            "annotations": annotations,
            # The chart's default is 0.0.0.0/0; the functions' VPC is the only client.
            "loadBalancerSourceRanges": source_cidrs,
        },
        "extraConfigFiles": {"user.yaml": user_yaml},
        "proxy": {"replicas": config.proxy_replicas},
        "queryNode": {"replicas": config.query_node_replicas},
        "dataNode": {"replicas": config.data_node_replicas},
        "minio": {"enabled": False},
        "externalS3": {
            "enabled": True,
            "host": f"s3.{region}.amazonaws.com",
            "port": 443,
            "useSSL": True,
            "bucketName": bucket,
            "rootPath": "milvus",
            "useIAM": True,
            "cloudProvider": "aws",
            "region": region,
            "useVirtualHost": True,
            "accessKey": "",
            "secretKey": "",
        },
        "metrics": {"enabled": False},  # no Prometheus operator in the cluster to read the ServiceMonitor
    }
