"""The ``standalone`` store: Milvus standalone on one Graviton EC2 instance that the stack creates.

* Data: an encrypted gp3 EBS volume (etcd's metadata, Milvus' local state) and an S3 bucket as Milvus' object
  storage, reached through the instance role (``minio.useIAM``: no static keys anywhere).
* Access: the root password is generated into Secrets Manager by CloudFormation; Milvus runs with authentication
  and one-way TLS, with a certificate from a private CA that the host creates on its data volume and publishes to a
  second secret, from which the functions read it (pymilvus ``server_pem_path``). Its security group admits the
  Milvus port from the functions' security group only.
* Recovery: CloudWatch alarms recover the instance on a failed system status check (same instance id, private IP
  and volumes, on other hardware) and reboot it on a failed instance status check; Docker restarts Milvus after a
  crash and at boot. The AMI is resolved at launch, so a newer Amazon Linux never replaces the running instance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from shardrag_cdk.buckets import data_bucket
from shardrag_cdk.nag import acknowledge
from shardrag_cdk.network import FunctionNetwork
from shardrag_cdk.store_config import MILVUS_PORT, ExternalEndpoint, StandaloneStoreConfig

#: The host's bootstrap script (checked by shellcheck in the tests); the user data exports its settings first.
BOOTSTRAP_SCRIPT: Final = Path(__file__).with_name("milvus_host.sh")
#: The name the server certificate is issued for; the functions verify it (pymilvus ``server_name``).
SERVER_NAME: Final = "milvus.shardrag.internal"
#: Amazon Linux 2023 for arm64, resolved by EC2 at launch (not by CloudFormation at every deployment).
AMI_PARAMETER: Final = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
DATA_DEVICE: Final = "/dev/sdf"


class MilvusStandalone(Construct):
    """One Milvus standalone host; ``endpoint`` is what every shard connects to (one collection per shard)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StandaloneStoreConfig,
        network: FunctionNetwork,
        access_logs: s3.IBucket,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        region = Stack.of(self).region
        self.bucket = data_bucket(
            self, "ObjectStorage", access_logs=access_logs, log_prefix="milvus/", removal_policy=removal_policy
        )
        self.root_secret = secretsmanager.Secret(
            self,
            "RootPassword",
            description="ShardRAG Milvus root user (the functions' token is username:password)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({"username": "root"}),
                generate_string_key="password",
                exclude_punctuation=True,
                password_length=32,
            ),
            removal_policy=removal_policy,
        )
        # Created with a random placeholder; the host replaces it with its CA certificate at first boot (the
        # functions treat a value without a PEM as "not yet" and retry on their next call).
        self.ca_secret = secretsmanager.Secret(
            self,
            "CaCertificate",
            description="ShardRAG Milvus: PEM of the private CA that signed the server certificate (public data)",
            generate_secret_string=secretsmanager.SecretStringGenerator(exclude_punctuation=True),
            removal_policy=removal_policy,
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=network.vpc,
            description="ShardRAG Milvus host: the Milvus port from the functions only",
            allow_all_outbound=True,
        )
        self.security_group.add_ingress_rule(
            network.functions_security_group, ec2.Port.tcp(MILVUS_PORT), "Milvus from the ShardRAG functions"
        )
        network.allow_endpoints_from(self.security_group, "AWS APIs from the Milvus host")
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="ShardRAG Milvus host",
            # Session Manager instead of SSH: no key pair, no open port.
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        # Exactly what Milvus' S3 client does with its bucket (objects, multipart uploads, listing), rather than
        # grant_read_write's action families.
        iam.Grant.add_to_principal(
            grantee=self.role,
            actions=[
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ],
            resource_arns=[self.bucket.arn_for_objects("*")],
        )
        iam.Grant.add_to_principal(
            grantee=self.role,
            actions=["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
            resource_arns=[self.bucket.bucket_arn],
        )
        self.root_secret.grant_read(self.role)
        self.ca_secret.grant_write(self.role)
        destroy = removal_policy == RemovalPolicy.DESTROY
        self.instance = ec2.Instance(
            self,
            "Host",
            vpc=network.vpc,
            vpc_subnets=network.host_subnets,
            associate_public_ip_address=network.host_public_ip or None,
            instance_type=ec2.InstanceType(config.instance_type),
            machine_image=ec2.MachineImage.resolve_ssm_parameter_at_launch(
                AMI_PARAMETER, os=ec2.OperatingSystemType.LINUX
            ),
            role=self.role,
            security_group=self.security_group,
            user_data=self._user_data(config, region),
            # IMDSv2 only; two hops so that Milvus, in a container, gets the instance role's credentials (S3).
            http_tokens=ec2.HttpTokens.REQUIRED,
            http_put_response_hop_limit=2,
            disable_api_termination=not destroy,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        config.root_volume_gib, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
                    ),
                ),
                ec2.BlockDevice(
                    device_name=DATA_DEVICE,
                    volume=ec2.BlockDeviceVolume.ebs(
                        config.data_volume_gib,
                        encrypted=True,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        delete_on_termination=destroy,
                    ),
                ),
            ],
        )
        # cfn-lint knows ImageId only as ami-…; EC2 resolves 'resolve:ssm:' at launch (see _acknowledge).
        self.instance.instance.add_metadata("cfn-lint", {"config": {"ignore_checks": ["E1152"]}})
        self._recovery_alarms()
        self.endpoint = ExternalEndpoint(
            uri=f"https://{self.instance.instance_private_ip}:{MILVUS_PORT}",
            token_secret=self.root_secret.secret_arn,
            ca_secret=self.ca_secret.secret_arn,
            server_name=SERVER_NAME,
        )
        self._acknowledge(destroy)

    def _user_data(self, config: StandaloneStoreConfig, region: str) -> ec2.UserData:
        user_data = ec2.UserData.for_linux()
        settings = {
            "MILVUS_IMAGE": f"milvusdb/milvus:{config.milvus_version}",
            "MILVUS_BUCKET": self.bucket.bucket_name,
            "AWS_REGION": region,
            "ROOT_SECRET_ID": self.root_secret.secret_arn,
            "CA_SECRET_ID": self.ca_secret.secret_arn,
            "SERVER_NAME": SERVER_NAME,
            "DATA_DEVICE": DATA_DEVICE,
        }
        user_data.add_commands(
            *(f"export {name}='{value}'" for name, value in settings.items()),
            "cat > /usr/local/sbin/milvus-host <<'SHARDRAG_BOOTSTRAP'",
            BOOTSTRAP_SCRIPT.read_text().rstrip("\n"),
            "SHARDRAG_BOOTSTRAP",
            "chmod 755 /usr/local/sbin/milvus-host",
            "/usr/local/sbin/milvus-host start",
        )
        return user_data

    def _recovery_alarms(self) -> None:
        for check, action, why in (
            ("StatusCheckFailed_System", cw_actions.Ec2InstanceAction.RECOVER, "hardware or host failure: recover"),
            ("StatusCheckFailed_Instance", cw_actions.Ec2InstanceAction.REBOOT, "unreachable OS: reboot"),
        ):
            alarm = cloudwatch.Alarm(
                self,
                check.replace("_", ""),
                alarm_description=f"ShardRAG Milvus host {why}",
                metric=cloudwatch.Metric(
                    namespace="AWS/EC2",
                    metric_name=check,
                    dimensions_map={"InstanceId": self.instance.instance_id},
                    statistic="Maximum",
                    period=Duration.minutes(1),
                ),
                threshold=1,
                evaluation_periods=2,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.MISSING,
            )
            alarm.add_alarm_action(cw_actions.Ec2Action(action))

    def _acknowledge(self, destroy: bool) -> None:
        bucket = Stack.of(self).get_logical_id(self.bucket.node.default_child)  # type: ignore[arg-type]
        acknowledge(
            self.role,
            (
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]",
                "AWS's policy for Session Manager (operator access without SSH keys or open ports).",
            ),
            (
                f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/*]",
                "Every object of Milvus' own bucket is Milvus' (segments, index files, write-ahead log).",
            ),
        )
        for secret, what in ((self.root_secret, "root password"), (self.ca_secret, "CA certificate")):
            acknowledge(
                secret,
                (
                    "AwsSolutions-SMG4",
                    f"The Milvus {what} is set once, at the first boot of the host (Milvus reads defaultRootPassword "
                    "only when it creates the root user); rotation would need a Milvus-aware rotation function.",
                ),
            )
        findings = [
            (
                "CloudFormation-Validate::E1152",
                "ImageId 'resolve:ssm:<parameter>' is resolved by EC2 at launch (documented for RunInstances): it is "
                "what keeps a new Amazon Linux release from replacing the running host on the next deployment.",
            ),
            (
                "AwsSolutions-EC28",
                "Status checks, which drive recovery, are 1-minute metrics without detailed monitoring.",
            ),
        ]
        if destroy:
            findings.append(
                ("AwsSolutions-EC29", "removal_policy 'destroy': the environment is meant to be torn down.")
            )
        acknowledge(self.instance, *findings)
