"""The OpenAPI document of the query API (served locally at ``/openapi.json``; ``openapi.json`` in the repo
is generated from it and a test keeps the two equal)."""

from __future__ import annotations

from typing import Any

from shardrag.request import query_request_schema

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_HIT = {
    "type": "object",
    "required": ["rank", "doc_id", "chunk_id", "score", "text"],
    "properties": {
        "rank": {"type": "integer"},
        "doc_id": {"type": "string"},
        "chunk_id": {"type": "string"},
        "score": {"type": "number", "description": "cosine similarity"},
        "text": {"type": "string"},
        "source": {"type": "string"},
        "title": {"type": "string"},
        "position": {"type": "integer"},
        "shard": {"type": "integer"},
        "metadata": {"type": "object"},
    },
}

_CITATION = {
    "type": "object",
    "required": ["ref", "doc_id", "chunk_id", "source", "score", "text"],
    "properties": {
        "ref": {"type": "integer"},
        "doc_id": {"type": "string"},
        "chunk_id": {"type": "string"},
        "source": {"type": "string"},
        "title": {"type": "string"},
        "score": {"type": "number"},
        "text": {"type": "string"},
    },
}

_RESPONSE = {
    "type": "object",
    "required": ["answer", "citations", "hits", "degraded", "shards", "timings_ms", "cache"],
    "properties": {
        "answer": {"type": ["string", "null"], "description": "null when generate is false"},
        "citations": {"type": "array", "items": {"$ref": "#/components/schemas/Citation"}},
        "hits": {"type": "array", "items": {"$ref": "#/components/schemas/Hit"}},
        "degraded": {"type": "boolean", "description": "true when at least one shard failed"},
        "shards": {
            "type": "object",
            "properties": {
                "searched": {"type": "array", "items": {"type": "integer"}},
                "failed": {"type": "array", "items": {"type": "integer"}},
                "skipped": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "timings_ms": {"type": "object", "additionalProperties": True},
        "model": {"type": ["string", "null"]},
        "cache": {
            "type": "string",
            "enum": ["hit", "miss"],
            "description": "hit: answered from the answer cache (same request, index unchanged since); miss: computed "
            "now (always, while the answer cache is off)",
        },
        "rerank": {
            "type": ["object", "null"],
            "description": "null when no reranker is configured; status 'failed' keeps the fused order",
            "properties": {
                "model": {"type": "string"},
                "status": {"type": "string", "enum": ["ok", "failed"]},
                "reason": {"type": "string"},
            },
        },
        "feedback": {
            "type": ["object", "null"],
            "description": "null when the query had no dense feedback round (retrieval.feedback off, or not hybrid); "
            "status 'ok': the dense side was searched again with the query moved towards the first pass's top "
            "documents; 'empty': nothing to feed back; 'failed': the first pass answers, reason says why; 'skipped': "
            "the query was already past retrieval.feedback.budget_ms (the shards are queueing), the first pass answers",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "empty", "failed", "skipped"]},
                "documents": {"type": "integer"},
                "reason": {"type": "string"},
            },
        },
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_SSE = {
    "type": "string",
    "description": (
        "Server-sent events: `retrieval` (session_id, retrieval_query, condenser, hits, citations, degraded, "
        "shards, timings_ms), then `token` ({text}) as the answer is generated, then `done` (answer, citations, "
        "usage, ttft_ms, total_ms) or `error` (status, code, message); `: keep-alive` comment lines between."
    ),
}


def _chat_schemas() -> dict[str, Any]:
    from shardrag.chat.records import ChatRequest

    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"ChatRequest": schema, **defs}


def _chat_path() -> dict[str, Any]:
    return {
        "post": {
            "summary": "Answer a question of a conversation, streamed as server-sent events",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
            },
            "responses": {
                "200": {"description": "The event stream", "content": {"text/event-stream": {"schema": _SSE}}},
                "400": _error_response("Malformed request, or a history over the limits"),
                "403": _error_response("No verified identity (deployed), or no valid tenant in multi-tenant mode"),
                "404": _error_response("No such conversation for this caller (unknown, expired or another's)"),
                "429": {
                    **_error_response("At capacity; retry after Retry-After seconds"),
                    "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
                },
            },
        }
    }


def openapi_document() -> dict[str, Any]:
    request = query_request_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "ShardRAG query API", "version": "1"},
        "paths": {
            "/query": {
                "post": {
                    "summary": "Answer a question from the indexed documents, with citations",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QueryRequest"}}},
                    },
                    "responses": {
                        "200": {
                            "description": "An answer (or ranked hits when generate is false)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/QueryResponse"}}},
                        },
                        "400": _error_response("Malformed request"),
                        "403": _error_response("Multi-tenant mode: the caller's identity carries no valid tenant"),
                        "429": {
                            **_error_response(
                                "At capacity: shed before an answer (throttled, or a shard saturated); retry after "
                                "Retry-After seconds"
                            ),
                            "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
                        },
                        "502": _error_response("The generator failed"),
                        "503": _error_response("No shard answered"),
                        "504": _error_response("The workflow timed out"),
                    },
                }
            },
            "/chat": _chat_path(),
            "/health": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "The API is up"}},
                }
            },
        },
        "components": {
            "schemas": {
                "QueryRequest": request,
                "QueryResponse": _RESPONSE,
                "Hit": _HIT,
                "Citation": _CITATION,
                "Error": _ERROR,
                **_chat_schemas(),
            }
        },
    }
