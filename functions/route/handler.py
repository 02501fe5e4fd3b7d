"""Route: choose the shards a query visits; the Parallel state's per-branch Choice reads the result."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from shardrag import services

logger = Logger(service="shardrag-route")
services.query_workflow()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return services.query_workflow().route(event)
