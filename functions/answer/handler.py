"""Answer: the chat front deployed. API Gateway (REST, Lambda proxy integration, ``responseTransferMode:
STREAM``) invokes it with InvokeWithResponseStream; ``runtime.py`` runs it and streams what it writes. Retrieval is
the Express query workflow (StartSyncExecution, generation off); the answer streams from the configured generator."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from shardrag import env, services
from shardrag.api_contract import map_execution
from shardrag.chat.front import ChatFront, HttpResponse
from shardrag.chat.service import ChatService
from shardrag.config import cached_settings

logger = Logger(service="shardrag-answer")
PAGE_DIR = Path(__file__).resolve().parent / "web"


def retrieve(body: dict[str, Any], tenant: str) -> tuple[int, dict[str, Any]]:
    """The query workflow, as ``POST /query`` runs it: the same input shape and the same status mapping."""
    result = _sfn().start_sync_execution(
        stateMachineArn=os.environ[env.QUERY_STATE_MACHINE_ARN],
        input=json.dumps({"request": body, "caller": {"tenant": tenant}}),
    )
    return map_execution(result)


@lru_cache(maxsize=1)
def _sfn() -> Any:
    return boto3.client("stepfunctions")


@lru_cache(maxsize=1)
def _chat() -> ChatService:
    return services.build_chat_service(retrieve)


def _presign(key: str) -> str:
    return str(
        boto3.client("s3").generate_presigned_url(
            "put_object",
            Params={"Bucket": os.environ[env.DOCUMENTS_BUCKET], "Key": key},
            ExpiresIn=900,
            HttpMethod="PUT",
        )
    )


def _upload_status(key: str) -> dict[str, Any]:
    from shardrag.ingestion.registry import DynamoDbRegistry

    registry = DynamoDbRegistry(boto3.client("dynamodb"), os.environ[env.REGISTRY_TABLE])
    state = registry.get_source(f"{os.environ[env.DOCUMENTS_BUCKET]}/{key}")
    if state is None:
        return {"key": key, "status": "pending"}
    return {"key": key, "status": state.status, "chunks": state.chunk_count, "reason": state.reason}


settings = cached_settings()  # cold start: settings validated once
front = ChatFront(
    _chat,
    page_dir=PAGE_DIR,
    presign=_presign,
    upload_status=_upload_status,
    tenant_claim=settings.tenancy.claim if settings.tenancy.mode == "multi" else None,
)


def handler(event: dict[str, Any], context: Any) -> HttpResponse:
    return front.handle(event)
