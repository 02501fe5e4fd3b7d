"""The VPC shared by the vector store and the functions that reach it: created, or imported by id (no lookups,
so synthesis needs no AWS account).

Without a NAT (the default) the functions placed in the VPC reach AWS through endpoints: S3 and DynamoDB gateway
endpoints (free), and one interface endpoint per other API they call (``layout.FUNCTION_AWS_SERVICES``: Secrets
Manager for the Milvus token, Bedrock if FuseAndGenerate were placed inside). A created VPC has public subnets
for the Milvus host only (it downloads Docker and the Milvus image; its security group admits nothing from the
internet) and isolated subnets for the functions.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from shardrag_cdk.layout import FunctionName, vpc_endpoint_services
from shardrag_cdk.store_config import NetworkConfig


class FunctionNetwork(Construct):
    """The VPC, the functions' security group and the endpoints those functions need."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: NetworkConfig, log_retention: logs.RetentionDays
    ) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        if config.imported is None:
            self.vpc: ec2.IVpc = self._create_vpc(config, log_retention)
            private_type = (
                ec2.SubnetType.PRIVATE_WITH_EGRESS if config.nat_gateways else ec2.SubnetType.PRIVATE_ISOLATED
            )
            self.function_subnets = ec2.SubnetSelection(subnet_type=private_type)
            #: Where the Milvus host runs: a public subnet (no NAT needed to download its image).
            self.host_subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
            self.host_public_ip = True
        else:
            imported = config.imported
            self.vpc = ec2.Vpc.from_vpc_attributes(
                self,
                "Vpc",
                vpc_id=imported.vpc_id,
                availability_zones=list(imported.availability_zones),
                private_subnet_ids=list(imported.subnet_ids),
                private_subnet_route_table_ids=list(imported.route_table_ids),
            )
            self.function_subnets = ec2.SubnetSelection(subnets=self.vpc.private_subnets)
            host_id = imported.host_subnet_id or imported.subnet_ids[0]
            index = imported.subnet_ids.index(host_id) if host_id in imported.subnet_ids else 0
            host = ec2.Subnet.from_subnet_attributes(
                self,
                "HostSubnet",
                subnet_id=host_id,
                availability_zone=imported.availability_zones[index],
                route_table_id=imported.route_table_ids[index],
            )
            self.host_subnets = ec2.SubnetSelection(subnets=[host])
            self.host_public_ip = False
            self._add_gateway_endpoints(self.vpc)
        self.functions_security_group = ec2.SecurityGroup(
            self,
            "FunctionsSecurityGroup",
            vpc=self.vpc,
            description="ShardRAG functions that reach the vector store",
            allow_all_outbound=True,
        )
        self.interface_endpoints: dict[str, ec2.InterfaceVpcEndpoint] = {}
        if config.needs_interface_endpoints:
            self._add_interface_endpoints()

    def _create_vpc(self, config: NetworkConfig, log_retention: logs.RetentionDays) -> ec2.Vpc:
        private_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if config.nat_gateways else ec2.SubnetType.PRIVATE_ISOLATED
        gateway, _ = vpc_endpoint_services(config.functions)
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(config.cidr),
            max_azs=None if config.availability_zones else config.max_azs,
            availability_zones=list(config.availability_zones) if config.availability_zones else None,
            nat_gateways=config.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="host", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="functions", subnet_type=private_type, cidr_mask=20),
            ],
            gateway_endpoints={name: ec2.GatewayVpcEndpointOptions(service=_gateway_service(name)) for name in gateway},
            # Rejected flows only: enough to see a security group that blocks the store, at almost no cost.
            flow_logs={
                "Rejected": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                        logs.LogGroup(self, "FlowLogs", retention=log_retention)
                    ),
                    traffic_type=ec2.FlowLogTrafficType.REJECT,
                )
            },
            # The default security group is never used; restricting it would add a custom-resource Lambda.
            restrict_default_security_group=False,
        )
        return vpc

    def _add_gateway_endpoints(self, vpc: ec2.IVpc) -> None:
        gateway, _ = vpc_endpoint_services(self.config.functions)
        for name in gateway:
            vpc.add_gateway_endpoint(
                f"{name.capitalize()}Endpoint", service=_gateway_service(name), subnets=[self.function_subnets]
            )
        # Imported subnets carry the route table ids given in the config; nothing reads one from a lookup.
        Validations.of(self).acknowledge(
            Acknowledgment(
                id="@aws-cdk/aws-ec2:noSubnetRouteTableId",
                reason="Route tables of imported subnets come from deployment.network.imported.route_table_ids.",
            )
        )

    def _add_interface_endpoints(self) -> None:
        _, interface = vpc_endpoint_services(self.config.functions)
        self.endpoint_security_group = ec2.SecurityGroup(
            self,
            "EndpointSecurityGroup",
            vpc=self.vpc,
            description="ShardRAG interface endpoints: HTTPS from the functions and the store",
            allow_all_outbound=False,
        )
        self.endpoint_security_group.add_ingress_rule(
            self.functions_security_group, ec2.Port.tcp(443), "AWS APIs from the ShardRAG functions"
        )
        for name in interface:
            construct_id = "".join(part.capitalize() for part in name.split("-")) + "Endpoint"
            self.interface_endpoints[name] = ec2.InterfaceVpcEndpoint(
                self,
                construct_id,
                vpc=self.vpc,
                service=ec2.InterfaceVpcEndpointAwsService(name),
                subnets=self.function_subnets,
                security_groups=[self.endpoint_security_group],
                private_dns_enabled=True,
                open=False,
            )

    def allow_endpoints_from(self, peer: ec2.ISecurityGroup, description: str) -> None:
        """Let another security group (the Milvus host's) use the interface endpoints."""
        if self.interface_endpoints:
            self.endpoint_security_group.add_ingress_rule(peer, ec2.Port.tcp(443), description)

    def placement(self, function: FunctionName) -> dict[str, Any]:
        """Keyword arguments for ``lambda.Function`` (empty when the function stays outside the VPC)."""
        if function not in self.config.functions:
            return {}
        return {"vpc": self.vpc, "subnets": self.function_subnets, "security_groups": [self.functions_security_group]}


def _gateway_service(name: str) -> ec2.GatewayVpcEndpointAwsService:
    return {"s3": ec2.GatewayVpcEndpointAwsService.S3, "dynamodb": ec2.GatewayVpcEndpointAwsService.DYNAMODB}[name]
