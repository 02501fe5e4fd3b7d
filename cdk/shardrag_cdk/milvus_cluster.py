"""The ``distributed`` store: Milvus in cluster mode on EKS, through the official Helm chart (pinned).

How a deployment that outgrows one machine scales: query nodes, data nodes and proxies are replicas of the chart,
on a managed node group of Graviton instances. Segments live in the stack's S3 bucket, reached through EKS Pod
Identity (no static keys); etcd keeps its metadata on EBS volumes (the EBS CSI driver add-on). The proxies sit
behind an internal Network Load Balancer (AWS Load Balancer Controller) that terminates TLS with the configured ACM
certificate; the functions reach it by the load balancer's name and verify the certificate's ``server_name``.
"""

from __future__ import annotations

from typing import cast

from aws_cdk import CfnCondition, CfnElement, RemovalPolicy, SecretValue, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.lambda_layer_kubectl_v33 import KubectlV33Layer
from constructs import Construct

from shardrag_cdk.buckets import data_bucket
from shardrag_cdk.milvus_helm import NAMESPACE, RELEASE, SERVICE_ACCOUNT, helm_values
from shardrag_cdk.nag import acknowledge
from shardrag_cdk.network import FunctionNetwork
from shardrag_cdk.store_config import MILVUS_CHART_VERSION, MILVUS_PORT, DistributedStoreConfig, ExternalEndpoint

CHART_REPOSITORY = "https://zilliztech.github.io/milvus-helm/"


class MilvusCluster(Construct):
    """An EKS cluster running the Milvus chart; ``endpoint`` is its internal load balancer."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DistributedStoreConfig,
        network: FunctionNetwork,
        access_logs: s3.IBucket,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.bucket = data_bucket(
            self, "ObjectStorage", access_logs=access_logs, log_prefix="milvus/", removal_policy=removal_policy
        )
        self.root_secret = secretsmanager.Secret(
            self,
            "RootPassword",
            description="ShardRAG Milvus root user (the functions' token is username:password)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template='{"username": "root"}',
                generate_string_key="password",
                exclude_punctuation=True,
                password_length=32,
            ),
            removal_policy=removal_policy,
        )
        self.cluster = eks.Cluster(
            self,
            "Cluster",
            version=eks.KubernetesVersion.of(config.kubernetes_version),
            vpc=network.vpc,
            vpc_subnets=[network.function_subnets],
            # A managed node group of the configured Graviton type (below), not EKS Auto Mode's choice of nodes.
            default_capacity_type=eks.DefaultCapacityType.NODEGROUP,
            default_capacity=0,
            endpoint_access=eks.EndpointAccess.PRIVATE,
            kubectl_provider_options=eks.KubectlProviderOptions(
                kubectl_layer=KubectlV33Layer(self, "KubectlLayer"),
                private_subnets=network.vpc.select_subnets(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS).subnets
                if network.config.imported is None
                else network.vpc.private_subnets,
            ),
            alb_controller=eks.AlbControllerOptions(version=eks.AlbControllerVersion.V2_9_2),
        )
        self.cluster.add_nodegroup_capacity(
            "Nodes",
            instance_types=[ec2.InstanceType(config.node_instance_type)],
            ami_type=eks.NodegroupAmiType.AL2023_ARM_64_STANDARD,
            min_size=config.node_count,
            desired_size=config.node_count,
            max_size=config.node_count * 2,
            subnets=network.function_subnets,
        )
        # The Pod Identity agent add-on comes with the first POD_IDENTITY service account (below).
        ebs_role = iam.Role(
            self,
            "EbsCsiRole",
            assumed_by=iam.ServicePrincipal("pods.eks.amazonaws.com").with_session_tags(),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AmazonEBSCSIDriverPolicy")],
        )
        eks.Addon(self, "EbsCsiDriver", cluster=cast(eks.ICluster, self.cluster), addon_name="aws-ebs-csi-driver")
        eks.CfnPodIdentityAssociation(
            self,
            "EbsCsiIdentity",
            cluster_name=self.cluster.cluster_name,
            namespace="kube-system",
            service_account="ebs-csi-controller-sa",
            role_arn=ebs_role.role_arn,
        )
        namespace = self.cluster.add_manifest(
            "Namespace", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        account = self.cluster.add_service_account(
            "MilvusServiceAccount",
            name=SERVICE_ACCOUNT,
            namespace=NAMESPACE,
            identity_type=eks.IdentityType.POD_IDENTITY,
        )
        account.node.add_dependency(namespace)
        iam.Grant.add_to_principal(
            grantee=account,
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
            resource_arns=[self.bucket.arn_for_objects("*")],
        )
        iam.Grant.add_to_principal(
            grantee=account,
            actions=["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
            resource_arns=[self.bucket.bucket_arn],
        )
        values = helm_values(
            config,
            bucket=self.bucket.bucket_name,
            region=stack.region,
            root_password=SecretValue.secrets_manager(
                self.root_secret.secret_arn, json_field="password"
            ).unsafe_unwrap(),  # a {{resolve:secretsmanager:…}} dynamic reference, resolved by CloudFormation
            certificate_arn=config.certificate_arn,
            source_cidrs=[network.vpc.vpc_cidr_block],
        )
        chart = self.cluster.add_helm_chart(
            "Milvus",
            chart="milvus",
            repository=CHART_REPOSITORY,
            version=config.chart_version or MILVUS_CHART_VERSION,
            release=RELEASE,
            namespace=NAMESPACE,
            values=values,
            wait=True,
        )
        chart.node.add_dependency(account)
        # The load balancer's DNS name, read from the service once the controller has created it.
        address = eks.KubernetesObjectValue(
            self,
            "ProxyAddress",
            cluster=cast(eks.ICluster, self.cluster),  # jsii's protocol misses an optional member
            object_type="service",
            object_name=f"{RELEASE}-milvus",
            object_namespace=NAMESPACE,
            json_path=".status.loadBalancer.ingress[0].hostname",
        )
        address.node.add_dependency(chart)
        self.endpoint = ExternalEndpoint(
            uri=f"https://{address.value}:{MILVUS_PORT}",
            token_secret=self.root_secret.secret_arn,
            server_name=config.server_name,
        )
        # The Helm values carry a dynamic reference, not a value; the password is in no template, log or output.
        acknowledge(
            self.root_secret,
            ("AwsSolutions-SMG4", "Milvus reads defaultRootPassword once, when it creates the root user."),
        )
        self._acknowledge(stack, account)

    def _acknowledge(self, stack: Stack, account: eks.ServiceAccount) -> None:
        """Findings on what CDK's EKS constructs create (kubectl provider, node group, AWS Load Balancer Controller):
        their policies are the ones AWS publishes for those components."""
        managed = "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
        why_managed = "AWS's managed policy for this EKS component (cluster, nodes, CNI, ECR pulls, kubectl Lambda)."
        cluster_findings = [
            (f"{managed}{name}]", why_managed)
            for name in (
                "AmazonEKSClusterPolicy",
                "service-role/AWSLambdaBasicExecutionRole",
                "service-role/AWSLambdaVPCAccessExecutionRole",
                "AmazonEC2ContainerRegistryReadOnly",
                "AmazonEKSWorkerNodePolicy",
                "AmazonEKS_CNI_Policy",
            )
        ]
        handler = self.cluster.node.find_child("KubectlProvider").node.find_child("Handler").node.default_child
        kubectl = stack.get_logical_id(cast(CfnElement, handler))
        conditions = [c for c in self.cluster.node.find_all() if isinstance(c, CfnCondition)]
        cluster_findings += [
            (
                f'{managed[: -len("arn:<AWS::Partition>:iam::aws:policy/")]}{{"Fn::If":["{stack.get_logical_id(c)}",'
                '{"Fn::Join":["",["arn:",{"Ref":"AWS::Partition"},":iam::aws:policy/'
                'AmazonElasticContainerRegistryPublicReadOnly"]]},{"Ref":"AWS::NoValue"}]}]',
                why_managed,
            )
            for c in conditions
        ]
        cluster_findings += [
            ("AwsSolutions-L1", "CDK's kubectl provider Lambda: its runtime is CDK's to choose."),
            (
                f"AwsSolutions-IAM5[Resource::<{kubectl}.Arn>:*]",
                "CDK's provider framework invokes its handler's versions.",
            ),
            ("Serverless-LambdaDLQ", "CDK's custom-resource Lambdas run synchronously for CloudFormation."),
            ("Serverless-LambdaLatestVersion", "CDK's kubectl provider Lambda: its runtime is CDK's to choose."),
            ("Serverless-LambdaTracing", "CDK's custom-resource Lambdas: deploy-time only."),
            ("Serverless-LambdaDefaultMemorySize", "CDK's custom-resource framework Lambda: deploy-time only."),
        ]
        acknowledge(self.cluster, *cluster_findings)
        acknowledge(
            self,
            (f"{managed}service-role/AmazonEBSCSIDriverPolicy]", "AWS's policy for the EBS CSI driver (etcd volumes)."),
        )
        bucket = stack.get_logical_id(self.bucket.node.default_child)  # type: ignore[arg-type]
        acknowledge(
            account,
            (f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/*]", "Every object of Milvus' own bucket is Milvus'."),
        )
        for child in stack.node.children:
            if child.node.id.endswith("-AlbController"):
                acknowledge(
                    child,
                    *(
                        (f"AwsSolutions-IAM5[Resource::{resource}]", "AWS Load Balancer Controller's published policy.")
                        for resource in (
                            "*",
                            "arn:<AWS::Partition>:ec2:*:*:security-group/*",
                            "arn:<AWS::Partition>:elasticloadbalancing:*:*:targetgroup/*/*",
                            "arn:<AWS::Partition>:elasticloadbalancing:*:*:loadbalancer/net/*/*",
                            "arn:<AWS::Partition>:elasticloadbalancing:*:*:loadbalancer/app/*/*",
                            "arn:<AWS::Partition>:elasticloadbalancing:*:*:listener/net/*/*/*",
                            "arn:<AWS::Partition>:elasticloadbalancing:*:*:listener/app/*/*/*",
                            "arn:<AWS::Partition>:elasticloadbalancing:*:*:listener-rule/net/*/*/*",
                            "arn:<AWS::Partition>:elasticloadbalancing:*:*:listener-rule/app/*/*/*",
                        )
                    ),
                )
