"""Optional VPC placement, imported by id: no context lookups, so synthesis needs no AWS account."""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from shardrag_cdk.config import VpcConfig
from shardrag_cdk.layout import FunctionName


class FunctionNetwork(Construct):
    """The configured VPC, subnets and security groups for the functions that reach Milvus privately."""

    def __init__(self, scope: Construct, construct_id: str, *, config: VpcConfig) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "Vpc",
            vpc_id=config.vpc_id,
            availability_zones=list(config.availability_zones),
            private_subnet_ids=list(config.subnet_ids),
        )
        self.subnets = ec2.SubnetSelection(subnets=self.vpc.private_subnets)
        self.security_groups = [
            ec2.SecurityGroup.from_security_group_id(self, f"SecurityGroup{i}", group, mutable=False)
            for i, group in enumerate(config.security_group_ids)
        ]
        # Imported subnets carry no route table id; nothing here reads one (no endpoints, no routes added).
        Validations.of(self).acknowledge(
            Acknowledgment(
                id="@aws-cdk/aws-ec2:noSubnetRouteTableId",
                reason="Only subnet ids are used (Lambda placement); route tables are never read.",
            )
        )

    def placement(self, function: FunctionName) -> dict[str, Any]:
        """Keyword arguments for ``lambda.Function`` (empty when the function stays outside the VPC)."""
        if function not in self.config.functions:
            return {}
        return {"vpc": self.vpc, "subnets": self.subnets, "security_groups": self.security_groups}
