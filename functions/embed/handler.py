"""Embed: validate the query request and embed the question (first state of the query workflow); with the
answer cache on, a cached answer ends the query here."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from shardrag import services

logger = Logger(service="shardrag-embed")
metrics = Metrics(namespace="ShardRAG", service="query")
# Cold start: validate the settings and load the ONNX model once per container, outside the handler.
services.query_workflow()
services.embedder()


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = services.query_workflow().embed(event)
    if result["cached"] is not None:
        metrics.add_metric(name="AnswerCacheHits", unit=MetricUnit.Count, value=1)
    return result
