"""The one shape of a data bucket in the stack: SSE-S3, no public access, TLS only, versioned (old versions
expire), server access logs into the stack's log bucket."""

from __future__ import annotations

from typing import Final

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

#: Old versions are kept for recovery only (a rollback of an artefact, a re-upload of a document).
NONCURRENT_VERSION_DAYS: Final = 30


def data_bucket(
    scope: Construct, construct_id: str, *, access_logs: s3.IBucket, log_prefix: str, removal_policy: RemovalPolicy
) -> s3.Bucket:
    return s3.Bucket(
        scope,
        construct_id,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        versioned=True,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=log_prefix,
        lifecycle_rules=[s3.LifecycleRule(noncurrent_version_expiration=Duration.days(NONCURRENT_VERSION_DAYS))],
        removal_policy=removal_policy,
    )


def access_log_bucket(
    scope: Construct, construct_id: str, *, retention_days: int, removal_policy: RemovalPolicy
) -> s3.Bucket:
    """The stack's server-access-log bucket (every data bucket logs here, under its own prefix).

    Server access logs support SSE-S3 only; the log bucket cannot log to itself. S3 log delivery is granted by bucket
    policy (cdk.json flag serverAccessLogsUseBucketPolicy), so ACLs stay disabled.
    """
    return s3.Bucket(
        scope,
        construct_id,
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(retention_days))],
        removal_policy=removal_policy,
    )
