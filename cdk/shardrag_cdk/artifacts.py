"""The index artefacts bucket: BM25 term statistics and routing centroids, kept beside the Milvus shards.

A bucket of its own, not a prefix of the documents bucket: every object created there is a document to ingest.
The functions reach it through ``shardrag.services.artifact_store()`` (``SHARDRAG_ARTIFACTS_BUCKET``), which keeps
every artefact under :data:`ARTIFACT_PREFIX`.
"""

from __future__ import annotations

from typing import Final

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct
from shardrag import env

from shardrag_cdk.buckets import data_bucket
from shardrag_cdk.config import DeploymentConfig
from shardrag_cdk.lambdas import ShardRagFunction, removal_policy
from shardrag_cdk.nag import acknowledge

#: Key prefix of every artefact (``S3ArtifactStore(prefix="index")`` in ``shardrag.services``).
ARTIFACT_PREFIX: Final = "index"


class IndexArtifacts(Construct):
    """The artefacts bucket (SSE-S3, no public access, TLS only, versioned, access-logged) and its grants.

    Writers read-modify-write each artefact with a conditional ``PutObject`` (``If-Match`` / ``If-None-Match``);
    readers re-read it when their cache expires.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, deployment: DeploymentConfig, access_logs: s3.IBucket
    ) -> None:
        super().__init__(scope, construct_id)
        self.bucket = data_bucket(
            self, "Bucket", access_logs=access_logs, log_prefix="artifacts/", removal_policy=removal_policy(deployment)
        )
        self._objects = self.bucket.arn_for_objects(f"{ARTIFACT_PREFIX}/*")

    def grant_read(self, function: ShardRagFunction) -> None:
        """GetObject on the artefacts, and the bucket name in the function's environment."""
        self._grant(function, ["s3:GetObject"], "reads the index artefacts (GetObject only)")

    def grant_read_write(self, function: ShardRagFunction) -> None:
        """GetObject and (conditional) PutObject on the artefacts, and the bucket name in the environment."""
        self._grant(
            function,
            ["s3:GetObject", "s3:PutObject"],
            "reads and conditionally rewrites the index artefacts (GetObject/PutObject only)",
        )

    def _grant(self, function: ShardRagFunction, actions: list[str], what: str) -> None:
        iam.Grant.add_to_principal(grantee=function.function, actions=actions, resource_arns=[self._objects])
        # Without ListBucket S3 answers a GET of a missing key with 403 instead of 404, and the store reads
        # "not written yet" (a fresh index) as a failure. The bucket holds artefacts only: listing reveals nothing
        # else.
        iam.Grant.add_to_principal(
            grantee=function.function, actions=["s3:ListBucket"], resource_arns=[self.bucket.bucket_arn]
        )
        function.function.add_environment(env.ARTIFACTS_BUCKET, self.bucket.bucket_name)
        bucket_id = Stack.of(self).get_logical_id(self.bucket.node.default_child)  # type: ignore[arg-type]
        acknowledge(
            function.role,
            (
                f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{ARTIFACT_PREFIX}/*]",
                f"{function.name} {what} under the artefact prefix; the key names the collection and shard.",
            ),
        )
