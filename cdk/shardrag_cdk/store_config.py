"""Where the vector store runs and the network the functions reach it through: ``deployment.store`` and
``deployment.network`` in ``cdk.json``.

Three store kinds, one discriminated model (``kind``):

* ``standalone``: the stack runs Milvus standalone (an official release, pinned) on one Graviton EC2 instance,
  with an EBS data volume and an S3 bucket as Milvus object storage. The dev default: one small instance at idle.
* ``distributed``: the stack runs Milvus in cluster mode on EKS through the official Helm chart (pinned): how a
  deployment that outgrows one machine scales, with the existing distributed engine.
* ``external``: a Milvus cluster or Zilliz Cloud the stack does not manage: endpoints and secret names.

Shards become collections on that one deployment (``<store.collection>_shard<i>``) unless an ``external`` store
lists one endpoint per shard; either way ``settings.store.shards`` is produced by the stack, never typed by hand.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from shardrag.config import ShardEndpoint

from shardrag_cdk.layout import STORE_FUNCTIONS, FunctionName

#: Milvus release run by ``standalone`` and ``distributed`` (the server the pinned pymilvus 3.0.x is released for:
#: Milvus 3.0.1 release notes, 2026-09-09, list PyMilvus 3.0.1 as its Python SDK).
MILVUS_VERSION: Final = "v3.0.1"
#: The official Milvus Helm chart (zilliztech/milvus-helm, ``charts/milvus/Chart.yaml``: version 5.0.19,
#: appVersion 2.6.15, 2026-04-16) and the release it deploys. The chart predates Milvus 3.0, so ``distributed`` runs
#: the chart's own release until a 3.0 chart is pinned (pymilvus 3.0 keeps fallbacks for 2.6 servers).
MILVUS_CHART_VERSION: Final = "5.0.19"
MILVUS_CHART_APP_VERSION: Final = "v2.6.15"
#: Port of the Milvus proxy (gRPC and REST).
MILVUS_PORT: Final = 19530
#: Graviton instance families: a digit, then ``g`` (t4g, m7g, c7gn, r8g, …). Nano to small have under 4 GiB,
#: too little for Milvus (its standalone guide asks for 8 GiB; 4 GiB runs a small dev corpus).
_GRAVITON = re.compile(r"^[a-z]+\d+g[a-z]*\.(medium|large|\d*xlarge|metal)$")
_SUBNET = r"^subnet-[0-9a-f]{8,17}$"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StandaloneStoreConfig(_Model):
    """Milvus standalone on one Graviton instance that the stack creates and that recovers by itself."""

    kind: Literal["standalone"] = "standalone"
    milvus_version: str = Field(default=MILVUS_VERSION, pattern=r"^v\d+\.\d+\.\d+$")
    instance_type: str = "t4g.large"
    #: The EBS volume holding etcd's metadata and Milvus' local state (segments live in the S3 bucket).
    data_volume_gib: int = Field(default=30, ge=8, le=16_384)
    root_volume_gib: int = Field(default=16, ge=8, le=1024)

    @model_validator(mode="after")
    def _graviton(self) -> StandaloneStoreConfig:
        if not _GRAVITON.fullmatch(self.instance_type):
            raise ValueError(
                f"instance_type {self.instance_type!r} must be a Graviton (arm64) type of at least 4 GiB, "
                "e.g. t4g.large, m7g.large"
            )
        return self


class DistributedStoreConfig(_Model):
    """Milvus in cluster mode on an EKS cluster the stack creates, through the official Helm chart."""

    kind: Literal["distributed"] = "distributed"
    milvus_version: str = Field(default=MILVUS_CHART_APP_VERSION, pattern=r"^v\d+\.\d+\.\d+$")
    chart_version: str = Field(default=MILVUS_CHART_VERSION, pattern=r"^\d+\.\d+\.\d+$")
    kubernetes_version: str = Field(default="1.33", pattern=r"^1\.\d{2}$")
    node_instance_type: str = "m7g.xlarge"
    node_count: int = Field(default=3, ge=2, le=100)
    query_node_replicas: int = Field(default=2, ge=1, le=64)
    data_node_replicas: int = Field(default=1, ge=1, le=64)
    proxy_replicas: int = Field(default=2, ge=1, le=16)
    #: An ACM certificate (in the stack's Region) for ``server_name``: the internal load balancer terminates TLS
    #: with it, and the functions verify it against the system roots under that name.
    certificate_arn: str = Field(pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$")
    server_name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")

    @model_validator(mode="after")
    def _graviton(self) -> DistributedStoreConfig:
        if not _GRAVITON.fullmatch(self.node_instance_type):
            raise ValueError(f"node_instance_type {self.node_instance_type!r} must be a Graviton (arm64) type")
        return self


class ExternalEndpoint(_Model):
    """A Milvus or Zilliz Cloud endpoint the stack does not manage."""

    uri: str = Field(pattern=r"^https?://[^\s/]+(:\d+)?/?$")
    #: Secrets Manager name (or ARN) of the token (``{"token": …}``, ``user:password``, or username/password JSON).
    token_secret: str | None = None
    #: Secret holding the PEM of a private CA (None: the system roots, e.g. Zilliz Cloud's public certificate).
    ca_secret: str | None = None
    server_name: str = ""
    db_name: str = ""


class ExternalStoreConfig(_Model):
    """An existing Milvus cluster or Zilliz Cloud cluster."""

    kind: Literal["external"] = "external"
    #: One endpoint (every shard a collection on it) or one per shard.
    endpoints: tuple[ExternalEndpoint, ...] = Field(min_length=1)
    #: An AWS PrivateLink endpoint service (``com.amazonaws.vpce.<region>.vpce-svc-…``, e.g. Zilliz Cloud's) to
    #: reach the endpoints privately from the functions' VPC.
    private_link_service: str | None = Field(default=None, pattern=r"^com\.amazonaws\.vpce\.[a-z0-9-]+\.vpce-svc-\w+$")
    private_link_port: int = Field(default=443, ge=1, le=65535)

    @model_validator(mode="after")
    def _tokens_need_tls(self) -> ExternalStoreConfig:
        insecure = [e.uri for e in self.endpoints if e.uri.startswith("http://") and e.token_secret]
        if insecure:
            raise ValueError(f"endpoints with a token must use https:// (the token would cross in clear): {insecure}")
        return self


StoreConfig = Annotated[
    StandaloneStoreConfig | DistributedStoreConfig | ExternalStoreConfig, Field(discriminator="kind")
]


class ImportedVpc(_Model):
    """An existing VPC, imported by id (no lookups: synthesis stays offline). Every list is one entry per subnet."""

    vpc_id: str = Field(pattern=r"^vpc-[0-9a-f]{8,17}$")
    #: Private subnets for the functions (and the interface endpoints).
    subnet_ids: tuple[Annotated[str, Field(pattern=_SUBNET)], ...] = Field(min_length=1)
    availability_zones: tuple[str, ...] = Field(min_length=1)
    #: Route tables of those subnets: the S3 and DynamoDB gateway endpoints are added to them.
    route_table_ids: tuple[Annotated[str, Field(pattern=r"^rtb-[0-9a-f]{8,17}$")], ...] = Field(min_length=1)
    #: Subnet of the Milvus host (``standalone``): it must reach the internet (a public subnet, or a NAT) to
    #: download Docker and the Milvus image. Default: the first of ``subnet_ids``.
    host_subnet_id: str | None = Field(default=None, pattern=_SUBNET)
    #: The subnets already route to a NAT gateway (then no interface endpoint is needed, only allowed).
    has_nat: bool = False

    @model_validator(mode="after")
    def _one_per_subnet(self) -> ImportedVpc:
        if not len(self.subnet_ids) == len(self.availability_zones) == len(self.route_table_ids):
            raise ValueError("availability_zones and route_table_ids must list one entry per subnet id, in order")
        return self


class NetworkConfig(_Model):
    """The VPC the store and the functions that reach it share."""

    #: None: the stack creates the VPC (public subnets for the Milvus host, isolated ones for the functions).
    imported: ImportedVpc | None = None
    cidr: str = Field(default="10.64.0.0/16", pattern=r"^\d{1,3}(\.\d{1,3}){3}/(1[6-9]|2[0-4])$")
    max_azs: int = Field(default=2, ge=1, le=3)
    #: The zones of a created VPC, by name. Without them CDK picks ``max_azs`` zones, but knows at most two of a
    #: stack whose account is not given (synthesis stays offline: no lookup); list them to use three.
    availability_zones: tuple[Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")], ...] | None = None
    #: NAT gateways of a created VPC (each ~$33/month before traffic): 0 means gateway endpoints for S3 and
    #: DynamoDB and interface endpoints for the other APIs the VPC functions call.
    nat_gateways: int = Field(default=0, ge=0, le=3)
    #: Interface endpoints even with a NAT (private traffic; without a NAT they are always created).
    interface_endpoints_with_nat: bool = False
    #: Functions placed in the VPC: those that reach Milvus (``layout.STORE_FUNCTIONS``). The others keep Lambda's
    #: own networking.
    functions: tuple[FunctionName, ...] = STORE_FUNCTIONS

    @model_validator(mode="after")
    def _milvus_functions_inside(self) -> NetworkConfig:
        missing = set(STORE_FUNCTIONS) - set(self.functions)
        if missing:
            raise ValueError(f"network.functions must include {sorted(missing)}: they reach Milvus in the VPC")
        if self.availability_zones is not None and len(self.availability_zones) != self.max_azs:
            raise ValueError(
                f"availability_zones lists {len(self.availability_zones)} zones, max_azs is {self.max_azs}"
            )
        if self.imported is None and self.availability_zones is None and self.max_azs > 2:
            raise ValueError(
                "max_azs above 2 needs network.availability_zones (CDK knows only two zones of a Region without a "
                "lookup, and synthesis does none)"
            )
        if self.imported is not None and self.nat_gateways:
            raise ValueError("nat_gateways applies to a created VPC; for an imported one set imported.has_nat")
        return self

    @property
    def has_nat(self) -> bool:
        return self.imported.has_nat if self.imported else self.nat_gateways > 0

    @property
    def needs_interface_endpoints(self) -> bool:
        return not self.has_nat or self.interface_endpoints_with_nat


def shard_endpoints(
    *, collection: str, shard_count: int, endpoints: tuple[ExternalEndpoint, ...]
) -> tuple[ShardEndpoint, ...]:
    """``settings.store.shards`` for a deployment: one endpoint serves every shard as its own collection
    (``<collection>_shard<i>``), or one endpoint per shard serves ``collection``."""
    if len(endpoints) == 1:
        (one,) = endpoints
        return tuple(
            ShardEndpoint(
                uri=one.uri,
                collection=f"{collection}_shard{i}",
                db_name=one.db_name,
                token_secret=one.token_secret,
                ca_secret=one.ca_secret,
                server_name=one.server_name,
            )
            for i in range(shard_count)
        )
    if len(endpoints) != shard_count:
        raise ValueError(f"{len(endpoints)} endpoints for {shard_count} shards: give one, or one per shard")
    return tuple(
        ShardEndpoint(
            uri=e.uri,
            collection=collection,
            db_name=e.db_name,
            token_secret=e.token_secret,
            ca_secret=e.ca_secret,
            server_name=e.server_name,
        )
        for e in endpoints
    )
