"""The chat front deployed: the conversations table, the answer function and its routes on the query API.

``POST /chat`` is a Lambda proxy integration with ``responseTransferMode: STREAM`` (API Gateway invokes the
function with InvokeWithResponseStream and passes its bytes on as they come; REST APIs only, at most 15 minutes
per stream, a 5-minute idle timeout on a regional endpoint, which the keep-alive comments stay far below, and no
VTL response mapping). The conversation and upload routes and the page use the same function and mode.
"""

from __future__ import annotations

from typing import Final

from aws_cdk import Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct
from shardrag import env
from shardrag.chat.conversations import OWNER_INDEX, TTL_ATTRIBUTE, table_definition
from shardrag.config import Settings

from shardrag_cdk.access import GeneratorAccess
from shardrag_cdk.config import DeploymentConfig
from shardrag_cdk.lambdas import ShardRagFunction
from shardrag_cdk.nag import acknowledge
from shardrag_cdk.network import FunctionNetwork
from shardrag_cdk.packaging import LambdaPackaging
from shardrag_cdk.tables import definition_table

#: The managed runtime runs this instead of its own loop (``functions/answer/bootstrap``), which cannot stream.
EXEC_WRAPPER: Final = "/var/task/bootstrap"
#: Where uploads land in the documents bucket (``shardrag.chat.front``: ``[<tenant>/]uploads/<name>``).
UPLOAD_KEYS: Final = ("uploads/*", "*/uploads/*")


class Conversations(Construct):
    """One item per turn, expiring through DynamoDB TTL (``expires_at``), keyed by tenant + caller + session."""

    def __init__(self, scope: Construct, construct_id: str, *, deployment: DeploymentConfig) -> None:
        super().__init__(scope, construct_id)
        self.table = definition_table(
            self, "Table", table_definition("unused"), deployment=deployment, ttl_attribute=TTL_ATTRIBUTE
        )


class ChatFront(Construct):
    """The answer function, what it may touch, and its routes on ``api``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api: apigw.RestApi,
        method_options: apigw.MethodOptions,
        state_machine: sfn.IStateMachine,
        documents: s3.Bucket,
        registry: dynamodb.ITable,
        settings: Settings,
        deployment: DeploymentConfig,
        packaging: LambdaPackaging,
        network: FunctionNetwork | None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.conversations = Conversations(self, "Conversations", deployment=deployment)
        self.answer = ShardRagFunction(
            self,
            "Answer",
            name="answer",
            settings=settings,
            deployment=deployment,
            packaging=packaging,
            network=network,
            extra_environment={
                "AWS_LAMBDA_EXEC_WRAPPER": EXEC_WRAPPER,
                env.QUERY_STATE_MACHINE_ARN: state_machine.state_machine_arn,
                env.CONVERSATIONS_TABLE: self.conversations.table.table_name,
                env.DOCUMENTS_BUCKET: documents.bucket_name,
                env.REGISTRY_TABLE: registry.table_name,
            },
        )
        role = self.answer.role
        state_machine.grant_start_sync_execution(role)
        # Exactly the calls the code makes: turns are queried and put (never updated or deleted: TTL removes them),
        # the caller's conversations listed through the owner index; an upload's status is one registry read.
        table = self.conversations.table
        iam.Grant.add_to_principal(
            grantee=role,
            actions=["dynamodb:Query", "dynamodb:PutItem"],
            resource_arns=[table.table_arn, f"{table.table_arn}/index/{OWNER_INDEX}"],
        )
        iam.Grant.add_to_principal(grantee=role, actions=["dynamodb:GetItem"], resource_arns=[registry.table_arn])
        # The presigned PUT is signed with this role's credentials: it may write uploads, nothing else.
        iam.Grant.add_to_principal(
            grantee=role,
            actions=["s3:PutObject"],
            resource_arns=[documents.arn_for_objects(pattern) for pattern in UPLOAD_KEYS],
        )
        acknowledge(
            role,
            (
                "AwsSolutions-IAM5[Resource::<IngestionDocumentsCA984E08.Arn>/uploads/*]",
                "Uploads get keys of the caller's choosing under uploads/: PutObject there and nowhere else.",
            ),
            (
                "AwsSolutions-IAM5[Resource::<IngestionDocumentsCA984E08.Arn>/*/uploads/*]",
                "Multi-tenant uploads go under <tenant>/uploads/ (the tenant is the key's first segment).",
            ),
        )
        GeneratorAccess(self, "Generator", generator=settings.generator, caller=role, streaming=True)
        # The page PUTs the file straight to S3 from the API's origin.
        origin = f"https://{api.rest_api_id}.execute-api.{Stack.of(self).region}.{Stack.of(self).url_suffix}"
        documents.add_cors_rule(
            allowed_methods=[s3.HttpMethods.PUT], allowed_origins=[origin], allowed_headers=["*"], max_age=3000
        )
        self.routes(api, method_options)

    def routes(self, api: apigw.RestApi, method_options: apigw.MethodOptions) -> None:
        integration = apigw.LambdaIntegration(
            self.answer.alias, proxy=True, response_transfer_mode=apigw.ResponseTransferMode.STREAM
        )

        def secured(resource: apigw.IResource, method: str) -> None:
            resource.add_method(
                method,
                integration,
                authorization_type=method_options.authorization_type,
                authorizer=method_options.authorizer,
                api_key_required=method_options.api_key_required,
            )

        def public(resource: apigw.IResource) -> None:
            method = resource.add_method(
                "GET", integration, authorization_type=apigw.AuthorizationType.NONE, api_key_required=False
            )
            reason = (
                "The chat page's own files hold no data and a browser must load them before it can sign in; every "
                "route the page calls is authorised like /query."
            )
            acknowledge(method, ("AwsSolutions-APIG4", reason), ("AwsSolutions-COG4", reason))

        public(api.root)
        public(api.root.add_resource("static").add_resource("{file}"))
        chat = api.root.add_resource("chat")
        secured(chat, "POST")
        sessions = chat.add_resource("sessions")
        secured(sessions, "GET")
        secured(sessions.add_resource("{session}"), "GET")
        uploads = api.root.add_resource("uploads")
        secured(uploads, "POST")
        secured(uploads.add_resource("status"), "GET")
