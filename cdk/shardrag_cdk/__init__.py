"""ShardRAG's CDK app: per-environment configuration and one construct per concern.

Kept import-free so that ``shardrag_cdk.layout`` (used by the asset build script) does not load aws-cdk-lib.
"""
