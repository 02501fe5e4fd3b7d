"""Ingestion: S3 object events -> parsed, chunked, embedded documents on their shards, with a registry that
keeps the index true to the bucket (idempotent, order-safe, tombstones, reconciliation)."""

from __future__ import annotations

from shardrag.ingestion.errors import IngestError, Reason, Rejected, Retryable
from shardrag.ingestion.events import ObjectEvent, normalise_sequencer, notification, parse_notification
from shardrag.ingestion.parsers import ParserRegistry
from shardrag.ingestion.reconcile import Reconciler, ReconcileReport
from shardrag.ingestion.registry import Claim, DocumentState, DynamoDbRegistry, SourceState, table_definition
from shardrag.ingestion.service import IngestOutcome, IngestService, build_ingest_service
from shardrag.ingestion.source import ObjectSource, S3ObjectSource

__all__ = [
    "Claim",
    "DocumentState",
    "DynamoDbRegistry",
    "IngestError",
    "IngestOutcome",
    "IngestService",
    "ObjectEvent",
    "ObjectSource",
    "ParserRegistry",
    "Reason",
    "ReconcileReport",
    "Reconciler",
    "Rejected",
    "Retryable",
    "S3ObjectSource",
    "SourceState",
    "build_ingest_service",
    "normalise_sequencer",
    "notification",
    "parse_notification",
    "table_definition",
]
