"""ShardSearch: search one shard's collection; a failure here is caught by that shard's Parallel branch."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from shardrag import services

logger = Logger(service="shardrag-shard-search")
services.query_workflow()
# Pay pymilvus's import during init (which Lambda runs at full CPU) rather than in the first request.
services.load_store_driver()


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(shard=event.get("shard"))
    return services.query_workflow().search(event)
