"""The vector store of one environment, as ``deployment.store`` chooses it, and the shard wiring it produces.

Whatever the kind, the result is the same: ``settings.store.shards`` (one entry per shard: URI, collection, the
token's and the CA certificate's secrets, the certificate's server name) and the secrets the Milvus functions may
read. Nobody types endpoints into ``cdk.json`` for a store the stack runs.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct
from shardrag.config import Settings, ShardEndpoint

from shardrag_cdk.access import imported_secret
from shardrag_cdk.config import DeploymentConfigError, EnvironmentConfig
from shardrag_cdk.lambdas import removal_policy
from shardrag_cdk.milvus_standalone import MilvusStandalone
from shardrag_cdk.network import FunctionNetwork
from shardrag_cdk.store_config import (
    DistributedStoreConfig,
    ExternalEndpoint,
    ExternalStoreConfig,
    StandaloneStoreConfig,
    shard_endpoints,
)


class VectorStore(Construct):
    """Runs (``standalone``, ``distributed``) or references (``external``) Milvus; ``settings`` wires the shards."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: FunctionNetwork | None,
        access_logs: s3.Bucket,
    ) -> None:
        super().__init__(scope, construct_id)
        store = config.deployment.store
        policy: RemovalPolicy = removal_policy(config.deployment)
        self.secrets: list[secretsmanager.ISecret] = []
        self.standalone: MilvusStandalone | None = None
        endpoints: tuple[ExternalEndpoint, ...]
        if isinstance(store, StandaloneStoreConfig):
            assert network is not None  # the config model refuses a standalone store without a network
            self.standalone = MilvusStandalone(
                self, "Standalone", config=store, network=network, access_logs=access_logs, removal_policy=policy
            )
            endpoints = (self.standalone.endpoint,)
            self.secrets = [self.standalone.root_secret, self.standalone.ca_secret]
        elif isinstance(store, DistributedStoreConfig):
            from shardrag_cdk.milvus_cluster import MilvusCluster

            assert network is not None
            cluster = MilvusCluster(
                self, "Cluster", config=store, network=network, access_logs=access_logs, removal_policy=policy
            )
            endpoints = (cluster.endpoint,)
            # The load balancer's certificate is a public ACM one: the system roots verify it, no CA secret.
            self.secrets = [cluster.root_secret]
        elif isinstance(store, ExternalStoreConfig):
            endpoints = store.endpoints
            self.secrets = [
                imported_secret(self, f"Secret{i}", name) for i, name in enumerate(config.external_secret_names())
            ]
            if store.private_link_service:
                if network is None:
                    raise DeploymentConfigError("store.private_link_service needs deployment.network")
                self.private_link = ec2.InterfaceVpcEndpoint(
                    self,
                    "PrivateLink",
                    vpc=network.vpc,
                    service=ec2.InterfaceVpcEndpointService(store.private_link_service, store.private_link_port),
                    subnets=network.function_subnets,
                    security_groups=[network.functions_security_group],
                    private_dns_enabled=True,
                    open=False,
                )
                self.private_link.connections.allow_from(
                    network.functions_security_group,
                    ec2.Port.tcp(store.private_link_port),
                    "Milvus over PrivateLink from the ShardRAG functions",
                )
        settings = config.settings
        self.shards = shard_endpoints(
            collection=settings.store.collection, shard_count=settings.store.shard_count, endpoints=endpoints
        )
        #: One deployment for every shard is written once (``store.endpoint``), not once per shard: the settings
        #: variable then stays far below Lambda's 4 KB whatever the shard count.
        first = endpoints[0]
        self.shared = ShardEndpoint(
            uri=first.uri,
            db_name=first.db_name,
            token_secret=first.token_secret,
            ca_secret=first.ca_secret,
            server_name=first.server_name,
        )
        self.one_endpoint = len(endpoints) == 1

    def settings(self, settings: Settings) -> Settings:
        """``settings`` pointing at this store (``store.endpoint``, or ``store.shards`` for one endpoint per shard)."""
        if self.one_endpoint:
            update: dict[str, object] = {"endpoint": self.shared}
        else:
            update = {"shards": self.shards}
        store = settings.store.model_copy(update=update)
        # The runtime derives one collection per shard from the shared endpoint; the same names as shard_endpoints.
        assert [e.collection for e in store.endpoints(Path())] == [e.collection for e in self.shards]
        return settings.model_copy(update={"store": store})
