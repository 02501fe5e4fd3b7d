"""Ingestion: documents bucket → SQS (+ DLQ) → ingest Lambda → Milvus shards and the document registry."""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct
from shardrag import env
from shardrag.config import Settings
from shardrag.ingestion.registry import table_definition

from shardrag_cdk.buckets import data_bucket
from shardrag_cdk.config import DeploymentConfig
from shardrag_cdk.lambdas import ShardRagFunction, removal_policy
from shardrag_cdk.nag import acknowledge
from shardrag_cdk.network import FunctionNetwork
from shardrag_cdk.packaging import LambdaPackaging
from shardrag_cdk.tables import definition_table


class DocumentBucket(Construct):
    """The documents bucket (SSE-S3, no public access, TLS only, versioned), logging to the stack's log bucket."""

    def __init__(
        self, scope: Construct, construct_id: str, *, deployment: DeploymentConfig, access_logs: s3.Bucket
    ) -> None:
        super().__init__(scope, construct_id)
        self.access_logs = access_logs
        # A re-upload replaces the document in the index; old versions are only kept for recovery.
        self.bucket = data_bucket(
            self,
            "Documents",
            access_logs=access_logs,
            log_prefix="documents/",
            removal_policy=removal_policy(deployment),
        )


class IngestQueue(Construct):
    """The ingestion queue and its dead-letter queue (SSE-SQS: S3 notifications can publish to it)."""

    def __init__(self, scope: Construct, construct_id: str, *, deployment: DeploymentConfig) -> None:
        super().__init__(scope, construct_id)
        ingestion = deployment.ingestion
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(ingestion.dlq_retention_days),
        )
        # AWS: visibility ≥ 6 x the function timeout, or a batch still being processed is redelivered.
        self.visibility_timeout_s = deployment.functions.ingest.timeout_s * ingestion.visibility_timeout_factor
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(self.visibility_timeout_s),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dead_letters, max_receive_count=ingestion.max_receive_count
            ),
        )
        acknowledge(self.dead_letters, ("Serverless-SQSRedrivePolicy", "This is the dead-letter queue itself."))


class DocumentRegistry(Construct):
    """The registry of ingested objects and documents (PITR, on-demand, KMS-encrypted).

    Keys and indexes come from :func:`shardrag.ingestion.registry.table_definition`, the very arguments the
    local runtime creates its table with, so the deployed table cannot drift from what the code queries.
    """

    def __init__(self, scope: Construct, construct_id: str, *, deployment: DeploymentConfig) -> None:
        super().__init__(scope, construct_id)
        self.table = definition_table(self, "Table", table_definition("unused"), deployment=deployment)


class Ingestion(Construct):
    """Wires the bucket's ObjectCreated/ObjectRemoved events through the queue into the ingest function."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        deployment: DeploymentConfig,
        packaging: LambdaPackaging,
        network: FunctionNetwork | None,
        access_logs: s3.Bucket,
    ) -> None:
        super().__init__(scope, construct_id)
        self.documents = DocumentBucket(self, "Documents", deployment=deployment, access_logs=access_logs)
        self.queue = IngestQueue(self, "Queue", deployment=deployment)
        self.registry = DocumentRegistry(self, "Registry", deployment=deployment)
        self.ingest = ShardRagFunction(
            self,
            "Ingest",
            name="ingest",
            settings=settings,
            deployment=deployment,
            packaging=packaging,
            network=network,
            extra_environment={
                env.REGISTRY_TABLE: self.registry.table.table_name,
                env.DOCUMENTS_BUCKET: self.documents.bucket.bucket_name,
                env.INGEST_QUEUE_URL: self.queue.queue.queue_url,
            },
        )
        # A large object's remaining parts are queued again for a fresh invocation (ingestion continuations).
        self.queue.queue.grant_send_messages(self.ingest.function)
        destination = s3n.SqsDestination(self.queue.queue)
        for event in (s3.EventType.OBJECT_CREATED, s3.EventType.OBJECT_REMOVED):
            self.documents.bucket.add_event_notification(event, destination)
        self.ingest.alias.add_event_source(
            event_sources.SqsEventSource(
                self.queue.queue,
                batch_size=deployment.ingestion.batch_size,
                max_batching_window=(
                    Duration.seconds(window) if (window := deployment.ingestion.max_batching_window_s) else None
                ),
                report_batch_item_failures=True,
            )
        )
        # Read (HEAD/GET) the documents and list the bucket (reconciliation), nothing else: the bucket's
        # grant_read would add GetObject*/List*/GetBucket* action families the function has no use for.
        iam.Grant.add_to_principal(
            grantee=self.ingest.function,
            actions=["s3:GetObject", "s3:GetObjectVersion"],
            resource_arns=[self.documents.bucket.arn_for_objects("*")],
        )
        iam.Grant.add_to_principal(
            grantee=self.ingest.function, actions=["s3:ListBucket"], resource_arns=[self.documents.bucket.bucket_arn]
        )
        self.registry.table.grant_read_write_data(self.ingest.function)
        self._acknowledge()

    def _acknowledge(self) -> None:
        stack = Stack.of(self)
        bucket = stack.get_logical_id(self.documents.bucket.node.default_child)  # type: ignore[arg-type]
        table = stack.get_logical_id(self.registry.table.node.default_child)  # type: ignore[arg-type]
        acknowledge(
            self.ingest.role,
            (
                f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/*]",
                "Ingest reads any document of the documents bucket (GetObject/GetObjectVersion only).",
            ),
            (
                f"AwsSolutions-IAM5[Resource::<{table}.Arn>/index/*]",
                "The registry's own indexes (by_source lists an object's documents); same table, same actions.",
            ),
        )
        acknowledge(
            self.ingest.alias,
            (
                "Serverless-LambdaEventSourceMappingDestination",
                "SQS event sources take no on-failure destination: the queue's redrive policy moves a message "
                "that keeps failing to the dead-letter queue, and batch item failures retry only failed records.",
            ),
        )
        # CDK's singleton that writes the bucket notification configuration (one per stack).
        for child in stack.node.children:
            if child.node.id.startswith("BucketNotificationsHandler"):
                acknowledge(
                    child,
                    (
                        "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                        "AWSLambdaBasicExecutionRole]",
                        "CDK-managed custom resource that applies the bucket notifications at deploy time.",
                    ),
                )
