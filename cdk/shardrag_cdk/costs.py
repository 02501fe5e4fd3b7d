"""What an environment costs: idle $/month and $ per million queries, for each store kind, from one prices file.

``cdk/costs/prices.json`` holds every figure with the page it came from and the date it was read; nothing here
hard-codes a price. ``python -m shardrag_cdk.costs`` prints the README's table (a test checks they match).

Idle is what runs with no traffic: the store (instance, volumes, cluster, load balancer), the network (interface
endpoints, NAT gateways, the host's public IPv4 address) and the secrets. Per million queries is API Gateway, the
EXPRESS workflow's executions, the Lambda requests and GB-seconds of one query (Embed, Route, one ShardSearch per
shard, Feedback where a query of the default mode gets a second dense round, FuseAndGenerate), Embed's read of the
epoch clock (``shardrag.visibility``: one strongly consistent DynamoDB read), the Bedrock tokens, the logs and,
where the answer cache is on, its DynamoDB requests counted as if every query missed (an upper bound: a hit skips
the put, the shard searches and generation). Not counted: the EXPRESS duration charge, S3 and DynamoDB requests of
ingestion, data transfer, and the external cluster itself.

An EXPRESS workflow is billed per execution and for its duration and memory, never per state transition: the
states a query passes through (Feedback's Choice and Task included) add nothing to the execution charge; the
time they take falls under the duration charge, which is not counted.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from shardrag_cdk.config import EnvironmentConfig, load_environment
from shardrag_cdk.layout import ROOT, FunctionName, vpc_endpoint_services
from shardrag_cdk.store_config import (
    DistributedStoreConfig,
    ExternalEndpoint,
    ExternalStoreConfig,
    NetworkConfig,
    StandaloneStoreConfig,
    StoreConfig,
)

PRICES_FILE: Final = ROOT / "cdk" / "costs" / "prices.json"
#: Store kinds the table shows for every environment (the environment's own configuration for its kind).
KINDS: Final = ("standalone", "distributed", "external")
_EXAMPLE_CERTIFICATE: Final = "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class Estimate:
    environment: str
    kind: str
    idle_per_month: float
    per_million_queries: float
    idle_items: dict[str, float]


class Prices:
    """``prices.json``: ``price(name)`` is the value of one entry (``ec2_hour.t4g.large`` for nested ones)."""

    def __init__(self, path: Path = PRICES_FILE) -> None:
        self.raw: dict[str, Any] = json.loads(path.read_text())
        self.hours: float = self.raw["hours_per_month"]["value"]
        self.assumptions: dict[str, Any] = self.raw["assumptions"]

    def price(self, name: str) -> float:
        node: Any = self.raw["prices"]
        for part in name.split(".", 1) if name.startswith("ec2_hour.") else [name]:
            if part not in node:
                raise KeyError(f"no price {name!r} in {PRICES_FILE.name}: add it with its source and date")
            node = node[part]
        value: float = node["value"]
        return value


def _variant(config: EnvironmentConfig, kind: str) -> tuple[StoreConfig, NetworkConfig | None]:
    """The environment's store if it is of ``kind``, else that kind's defaults (with the network it needs)."""
    deployment = config.deployment
    if deployment.store.kind == kind:
        return deployment.store, deployment.network
    network = deployment.network or NetworkConfig()
    if kind == "standalone":
        return StandaloneStoreConfig(), network
    if kind == "distributed":
        store = DistributedStoreConfig(certificate_arn=_EXAMPLE_CERTIFICATE, server_name="milvus.example.com")
        return store, network.model_copy(update={"nat_gateways": max(network.nat_gateways, 1)})
    return ExternalStoreConfig(endpoints=(ExternalEndpoint(uri="https://milvus.example.com"),)), None


def estimate(config: EnvironmentConfig, kind: str, prices: Prices) -> Estimate:
    store, network = _variant(config, kind)
    hours = prices.hours
    items: dict[str, float] = {}
    if isinstance(store, StandaloneStoreConfig):
        items["Milvus host"] = prices.price(f"ec2_hour.{store.instance_type}") * hours
        items["EBS volumes"] = (store.data_volume_gib + store.root_volume_gib) * prices.price("ebs_gp3_gb_month")
        items["secrets"] = 2 * prices.price("secret_month")
        if network is not None and network.imported is None:
            items["host public IPv4"] = prices.price("public_ipv4_hour") * hours
    elif isinstance(store, DistributedStoreConfig):
        items["EKS control plane"] = prices.price("eks_cluster_hour") * hours
        items["EKS nodes"] = store.node_count * prices.price(f"ec2_hour.{store.node_instance_type}") * hours
        volumes = prices.assumptions["etcd_volume_gib_per_replica"] * prices.assumptions["etcd_replicas"]
        items["etcd volumes"] = volumes * prices.price("ebs_gp3_gb_month")
        items["internal NLB"] = prices.price("nlb_hour") * hours
        items["secrets"] = prices.price("secret_month")
    if network is not None:
        zones = len(network.imported.subnet_ids) if network.imported else network.max_azs
        if network.needs_interface_endpoints:
            _, interface = vpc_endpoint_services(network.functions)
            items["interface endpoints"] = len(interface) * zones * prices.price("interface_endpoint_az_hour") * hours
        if network.imported is None and network.nat_gateways:
            items["NAT gateways"] = network.nat_gateways * prices.price("nat_gateway_hour") * hours
    return Estimate(
        environment=config.name,
        kind=kind,
        idle_per_month=sum(items.values()),
        per_million_queries=_per_million_queries(config, prices),
        idle_items=items,
    )


def invocations_per_query(config: EnvironmentConfig) -> dict[FunctionName, int]:
    """Lambda invocations of one query that misses the answer cache, as a request that sets neither ``mode`` nor
    ``feedback`` runs, with every shard searched (routing may select fewer: an upper bound)."""
    settings = config.settings
    # Embed marks a hybrid query for the Feedback state unless the request or retrieval.feedback says otherwise
    # (shardrag.workflow).
    feedback = settings.retrieval.mode == "hybrid" and settings.retrieval.feedback.enabled
    return {
        "embed": 1,
        "route": 1,
        "shard_search": settings.store.shard_count,
        "feedback": int(feedback),
        "fuse_generate": 1,
    }


def _per_million_queries(config: EnvironmentConfig, prices: Prices) -> float:
    functions = config.deployment.functions
    duration: dict[str, float] = prices.assumptions["duration_s"]
    invocations = invocations_per_query(config)
    gb_seconds = sum(
        count * functions.of(name).memory_mb / 1024 * duration[name] for name, count in invocations.items()
    )
    million = 1_000_000
    cost: float = prices.price("api_gateway_rest_million") + prices.price("step_functions_express_million")
    cost += sum(invocations.values()) * prices.price("lambda_request_million")
    cost += gb_seconds * million * prices.price("lambda_gb_second_x86")
    generator = config.settings.generator
    if generator.kind == "bedrock":
        tokens_in = prices.assumptions["bedrock_input_tokens_per_query"]
        tokens_out = prices.assumptions["bedrock_output_tokens_per_query"]
        per_query: float = (
            tokens_in * prices.price("bedrock_haiku_5_5_input_mtok")
            + tokens_out * prices.price("bedrock_haiku_5_5_output_mtok")
        ) / million
        if generator.model_id.startswith(("us.", "eu.", "apac.", "jp.", "au.", "ca.")):
            per_query *= prices.price("bedrock_geo_profile_factor")
        cost += per_query * million
    # Embed reads the snapshot every query sees: one strongly consistent read of an item under 4 KB, one unit.
    cost += prices.price("dynamodb_read_request_million")
    log_gb = float(prices.assumptions["log_kb_per_query"]) * million / 1024 / 1024
    cost += log_gb * prices.price("cloudwatch_logs_gb")
    if config.settings.cache.answers:
        cost += million * _answer_cache_per_query(prices)
    return cost


def _answer_cache_per_query(prices: Prices) -> float:
    """Embed reads the index version (strongly consistent: 1 read unit) and looks the answer up (eventually
    consistent, up to 4 KB: half a unit); on a miss FuseAndGenerate puts it (one write unit per KB)."""
    item_kb = float(prices.assumptions["answer_item_kb"])
    reads = 1 + 0.5 * math.ceil(item_kb / 4)
    writes = math.ceil(item_kb)
    million = 1_000_000
    return (
        reads * prices.price("dynamodb_read_request_million") + writes * prices.price("dynamodb_write_request_million")
    ) / million


def table(environments: dict[str, Any], prices: Prices | None = None) -> str:
    """The README's cost table (markdown) for every environment of ``cdk.json`` and every store kind."""
    prices = prices or Prices()
    lines = [
        "| environment | store | idle $/month | $ per million queries | idle items |",
        "|---|---|---:|---:|---|",
    ]
    for name in sorted(environments):
        config = load_environment(environments, name)
        for kind in KINDS:
            result = estimate(config, kind, prices)
            configured = " (configured)" if config.deployment.store.kind == kind else ""
            detail = ", ".join(f"{item} {value:,.2f}" for item, value in result.idle_items.items()) or "none"
            lines.append(
                f"| {name} | {kind}{configured} | {result.idle_per_month:,.2f} | "
                f"{result.per_million_queries:,.2f} | {detail} |"
            )
    return "\n".join(lines)


def main() -> int:
    environments = json.loads((ROOT / "cdk.json").read_text())["context"]["environments"]
    print(table(environments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
