"""FuseAndGenerate: merge the shards' hits, then write a cited answer (unless ``generate`` is false)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from shardrag import services

logger = Logger(service="shardrag-fuse-generate")
metrics = Metrics(namespace="ShardRAG", service="query")
services.query_workflow()


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    workflow = services.query_workflow()
    response = workflow.fuse_generate(event)
    if workflow.caches_answers:
        metrics.add_metric(name="AnswerCacheMisses", unit=MetricUnit.Count, value=1)
    if response["degraded"]:
        metrics.add_metric(name="DegradedAnswers", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="ShardFailures", unit=MetricUnit.Count, value=len(response["shards"]["failed"]))
    return response
