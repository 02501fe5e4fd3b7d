"""Embed: validate the query request and embed the question (first state of the query workflow)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from shardrag import services

logger = Logger(service="shardrag-embed")
# Cold start: validate the settings and load the ONNX model once per container, outside the handler.
services.query_workflow()
services.embedder()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return services.query_workflow().embed(event)
