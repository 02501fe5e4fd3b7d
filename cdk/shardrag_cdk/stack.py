"""The ShardRAG stack: one environment, composed of one construct per concern."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from aws_cdk import aws_iam as iam
from constructs import Construct
from shardrag import env
from shardrag.visibility import CLOCK_KEY

from shardrag_cdk.access import GeneratorAccess, MilvusSecretsAccess, RerankerAccess
from shardrag_cdk.answer_cache import AnswerCacheTable
from shardrag_cdk.api import QueryApi
from shardrag_cdk.artifacts import IndexArtifacts
from shardrag_cdk.buckets import access_log_bucket
from shardrag_cdk.chat import ChatFront
from shardrag_cdk.config import EnvironmentConfig
from shardrag_cdk.ingestion import Ingestion
from shardrag_cdk.lambdas import QueryFunctions, log_retention, removal_policy
from shardrag_cdk.layout import STORE_FUNCTIONS
from shardrag_cdk.network import FunctionNetwork
from shardrag_cdk.observability import Observability
from shardrag_cdk.packaging import AssetMode, LambdaPackaging
from shardrag_cdk.query_workflow import QueryWorkflow
from shardrag_cdk.vector_store import VectorStore


class ShardRagStack(Stack):
    """Query API + workflow, ingestion pipeline, access grants and observability for one environment."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, assets: AssetMode, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, description=f"ShardRAG ({config.name})", **kwargs)
        settings, deployment = config.settings, config.deployment
        Tags.of(self).add("project", "shardrag")
        Tags.of(self).add("environment", config.name)

        packaging = LambdaPackaging(self, "Packaging", mode=assets)
        network = (
            FunctionNetwork(self, "Network", config=deployment.network, log_retention=log_retention(deployment))
            if deployment.network
            else None
        )
        access_logs = access_log_bucket(
            self, "AccessLogs", retention_days=deployment.log_retention_days, removal_policy=removal_policy(deployment)
        )
        store = VectorStore(self, "Store", config=config, network=network, access_logs=access_logs)
        # The functions run with the shards this stack wired, never with endpoints typed into cdk.json.
        settings = store.settings(settings)
        query = QueryFunctions(
            self, "QueryFunctions", settings=settings, deployment=deployment, packaging=packaging, network=network
        )
        ingestion = Ingestion(
            self,
            "Ingestion",
            settings=settings,
            deployment=deployment,
            packaging=packaging,
            network=network,
            access_logs=access_logs,
        )
        MilvusSecretsAccess(
            self,
            "MilvusSecrets",
            secrets=store.secrets,
            readers=[
                *(fn.function for name, fn in query.by_name.items() if name in STORE_FUNCTIONS),
                ingestion.ingest.function,
            ],
        )
        artifacts = IndexArtifacts(self, "IndexArtifacts", deployment=deployment, access_logs=access_logs)
        artifacts.grant_read_write(ingestion.ingest)
        # Embed: corpus-wide IDF for the BM25 query side; Route: the centroids (routing.mode centroid).
        for reader in ("embed", "route"):
            artifacts.grant_read(query.by_name[reader])
        self._grant_epochs(ingestion, query)
        fuse_generate = query.by_name["fuse_generate"]
        answers = AnswerCacheTable(self, "AnswerCache") if settings.cache.answers else None
        if answers is not None:
            answers.grant_lookup(query.by_name["embed"])
            answers.grant_store(fuse_generate)
            answers.grant_advance(ingestion.ingest)
        GeneratorAccess(self, "Generator", generator=settings.generator, caller=fuse_generate.role)
        RerankerAccess(self, "Reranker", rerank=settings.rerank, caller=fuse_generate.role)
        workflow = QueryWorkflow(
            self,
            "QueryWorkflow",
            functions=query.aliases(),
            shard_count=settings.store.shard_count,
            deployment=deployment,
        )
        api = QueryApi(
            self,
            "QueryApi",
            state_machine=workflow.state_machine,
            config=deployment.api,
            deployment=deployment,
            tenancy=settings.tenancy,
            tenant_attribute=config.tenant_attribute(),
        )
        chat = ChatFront(
            self,
            "Chat",
            api=api.api,
            method_options=api.auth.method_options,
            state_machine=workflow.state_machine,
            documents=ingestion.documents.bucket,
            registry=ingestion.registry.table,
            settings=settings,
            deployment=deployment,
            packaging=packaging,
            network=network,
        )
        Observability(
            self,
            "Observability",
            api=api.api,
            state_machine=workflow.state_machine,
            functions={name: fn.function for name, fn in query.by_name.items()},
            ingest=ingestion.ingest.function,
            queue=ingestion.queue.queue,
            dead_letters=ingestion.queue.dead_letters,
            deployment=deployment,
            rerank_logs=fuse_generate.log_group if settings.rerank.kind != "none" else None,
        )
        CfnOutput(self, "ApiUrl", value=api.api.url_for_path("/query"), description="POST questions here")
        CfnOutput(self, "ChatUrl", value=api.api.url_for_path("/"), description="the chat page")
        CfnOutput(self, "ConversationsTable", value=chat.conversations.table.table_name)
        CfnOutput(self, "DocumentsBucket", value=ingestion.documents.bucket.bucket_name)
        CfnOutput(self, "IndexArtifactsBucket", value=artifacts.bucket.bucket_name)
        CfnOutput(self, "RegistryTable", value=ingestion.registry.table.table_name)
        if answers is not None:
            CfnOutput(self, "AnswerCacheTable", value=answers.table.table_name)
        CfnOutput(self, "QueryStateMachine", value=workflow.state_machine.state_machine_arn)
        CfnOutput(self, "DeadLetterQueue", value=ingestion.queue.dead_letters.queue_url)
        CfnOutput(self, "StoreKind", value=deployment.store.kind)
        if store.standalone is not None:
            CfnOutput(self, "MilvusInstance", value=store.standalone.instance.instance_id)
            CfnOutput(self, "MilvusRootSecret", value=store.standalone.root_secret.secret_arn)

    @staticmethod
    def _grant_epochs(ingestion: Ingestion, query: QueryFunctions) -> None:
        """The epoch clock (``shardrag.visibility``) is an item of the registry table: the ingest function begins
        and commits epochs (it reads and writes the table already), Embed reads the snapshot each query sees, and
        may read that item only."""
        table = ingestion.registry.table
        ingestion.ingest.function.add_environment(env.EPOCH_TABLE, table.table_name)
        embed = query.by_name["embed"].function
        iam.Grant.add_to_principal(
            grantee=embed,
            actions=["dynamodb:GetItem"],
            resource_arns=[table.table_arn],
            conditions={"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [CLOCK_KEY]}},
        )
        embed.add_environment(env.EPOCH_TABLE, table.table_name)
