"""Ingest: S3 object events delivered through SQS -> index and registry (partial batch failure reporting).

A record fails (and SQS redelivers it, then dead-letters it after ``maxReceiveCount``) only for transient
errors; a permanently bad file is recorded as ``failed`` in the registry and acknowledged.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from shardrag import services
from shardrag.ingestion.errors import Reason, Retryable
from shardrag.model_source import use_model_archive

logger = Logger(service="shardrag-ingest")
processor = BatchProcessor(event_type=EventType.SQS)
# Deployed, the model comes from S3 (no room for its layer beside pymilvus); locally it is already on disk.
use_model_archive()
# Cold start: settings, the ONNX model, the shard clients and the registry client, once per container.
services.ingest_service()


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    try:
        outcomes = services.ingest_service().handle_message(
            record.body, record.message_id, time_left=lambda: lambda_context.get_remaining_time_in_millis() / 1000
        )
    except Retryable as exc:
        if exc.reason is Reason.BUSY:
            # Another worker holds the key and is usually done in seconds: come back soon, not after the
            # queue's visibility timeout (30 min deployed). Read raw: a test's record may lack both fields.
            raw = record.raw_event
            receives = (raw.get("attributes") or {}).get("ApproximateReceiveCount")
            services.retry_busy_soon(raw.get("receiptHandle"), receives)
        raise
    for outcome in outcomes:
        logger.info("ingested", extra=outcome.model_dump())


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
