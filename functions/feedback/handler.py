"""Feedback: a hybrid query's second, dense round (``shardrag.feedback``); it falls back to the first pass itself."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from shardrag import services

logger = Logger(service="shardrag-feedback")
metrics = Metrics(namespace="ShardRAG", service="query")
services.query_workflow()
# Pay pymilvus's import during init (which Lambda runs at full CPU) rather than in the first request.
services.load_store_driver()


@metrics.log_metrics
@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    state = services.query_workflow().feedback(event)
    status = state["feedback"]["status"]
    if status == "failed":
        metrics.add_metric(name="FeedbackFallbacks", unit=MetricUnit.Count, value=1)
    elif status == "skipped":  # past retrieval.feedback.budget_ms: shed under load
        metrics.add_metric(name="FeedbackSkipped", unit=MetricUnit.Count, value=1)
    return state
