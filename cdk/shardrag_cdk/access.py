"""Access to what lives outside the stack: the Milvus token secrets, the generator (Bedrock or an API key) and
the reranker (Bedrock Rerank).

Grants name exactly the configured secrets and models. Tokens never enter an environment variable: the
functions get the secret *names* (inside the settings JSON) and read the values at cold start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct
from shardrag.config import GeneratorSettings
from shardrag.rerank import RerankSettings

from shardrag_cdk.nag import acknowledge

#: Prefixes of Bedrock cross-region inference profiles (``us.anthropic…``): they route to any Region of the
#: geography, so the underlying foundation model must be allowed in every Region.
_INFERENCE_PROFILE_PREFIXES: Final = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")


class MilvusSecretsAccess(Construct):
    """Read access to the store's secrets (tokens, CA certificates), for the functions that talk to Milvus."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        secrets: Sequence[secretsmanager.ISecret],
        readers: Sequence[iam.IGrantable],
    ) -> None:
        super().__init__(scope, construct_id)
        self.secrets = list(secrets)
        for secret in self.secrets:
            for reader in readers:
                secret.grant_read(reader)


def imported_secret(scope: Construct, construct_id: str, name_or_arn: str) -> secretsmanager.ISecret:
    """A secret the stack does not manage, by name (any version suffix) or by its complete ARN."""
    if name_or_arn.startswith("arn:"):
        return secretsmanager.Secret.from_secret_complete_arn(scope, construct_id, name_or_arn)
    return secretsmanager.Secret.from_secret_name_v2(scope, construct_id, name_or_arn)


def bedrock_model_arns(stack: Stack, model_id: str, region: str | None) -> list[str]:
    """The ARNs ``bedrock:InvokeModel`` needs for a model id, an inference profile id or an ARN."""
    if model_id.startswith("arn:"):
        return [model_id]
    partition, account, home = stack.partition, stack.account, region or stack.region
    if model_id.startswith(_INFERENCE_PROFILE_PREFIXES):
        base_model = model_id.split(".", 1)[1]
        return [
            f"arn:{partition}:bedrock:{home}:{account}:inference-profile/{model_id}",
            f"arn:{partition}:bedrock:*::foundation-model/{base_model}",
        ]
    return [f"arn:{partition}:bedrock:{home}::foundation-model/{model_id}"]


class GeneratorAccess(Construct):
    """What the FuseAndGenerate function needs to reach the configured generator, and nothing more."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        generator: GeneratorSettings,
        caller: iam.Role,
        streaming: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        if generator.kind == "bedrock":
            arns = bedrock_model_arns(Stack.of(self), generator.model_id, generator.region)
            # Converse is authorised by InvokeModel, ConverseStream by InvokeModelWithResponseStream (Bedrock user
            # guide, "Prerequisites for running model inference"); only the chat front streams.
            actions = ["bedrock:InvokeModel"] + (["bedrock:InvokeModelWithResponseStream"] if streaming else [])
            iam.Grant.add_to_principal(grantee=caller, actions=actions, resource_arns=arns)
            if generator.model_id.startswith(_INFERENCE_PROFILE_PREFIXES):
                base_model = generator.model_id.split(".", 1)[1]
                acknowledge(
                    caller,
                    (
                        f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:bedrock:*::foundation-model/{base_model}]",
                        "A cross-region inference profile runs the model in any Region of its geography; the "
                        "statement names that one model only.",
                    ),
                )
        if generator.api_key_secret:
            secret = secretsmanager.Secret.from_secret_name_v2(self, "ApiKey", generator.api_key_secret)
            secret.grant_read(caller)


class RerankerAccess(Construct):
    """What the FuseAndGenerate function needs to call the Bedrock ``Rerank`` API with the configured model.

    Two actions (AWS, "Permissions for reranking in Amazon Bedrock"): ``bedrock:Rerank``, which the Service
    Authorization Reference lists without a resource type, so it can only be granted on ``*``; and
    ``bedrock:InvokeModel`` on the reranker model, which is where the grant is actually narrowed.
    """

    def __init__(self, scope: Construct, construct_id: str, *, rerank: RerankSettings, caller: iam.Role) -> None:
        super().__init__(scope, construct_id)
        if rerank.kind != "bedrock":
            return
        iam.Grant.add_to_principal(grantee=caller, actions=["bedrock:Rerank"], resource_arns=["*"])
        iam.Grant.add_to_principal(
            grantee=caller,
            actions=["bedrock:InvokeModel"],
            resource_arns=bedrock_model_arns(Stack.of(self), rerank.model_id, rerank.region),
        )
        acknowledge(
            caller,
            (
                "AwsSolutions-IAM5[Resource::*]",
                "X-Ray PutTraceSegments/PutTelemetryRecords (tracing is on) and bedrock:Rerank support no resource "
                "scoping; the reranker model itself is named in the bedrock:InvokeModel statement.",
            ),
        )
