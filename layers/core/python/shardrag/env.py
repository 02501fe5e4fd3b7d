"""Environment variable names shared by the CDK app, the local runtime and the handlers.

One module so that a rename cannot leave a deployed function reading a variable nobody sets.
"""

from __future__ import annotations

from typing import Final

#: JSON of :class:`shardrag.config.Settings` — the whole runtime configuration in one variable.
SETTINGS_JSON: Final = "SHARDRAG_SETTINGS"
#: Path of a JSON settings file (local runtime); ignored when ``SHARDRAG_SETTINGS`` is set.
SETTINGS_FILE: Final = "SHARDRAG_SETTINGS_FILE"
#: Directory holding ``model.onnx`` and ``tokenizer.json`` (overrides ``embedding.model_dir``).
MODEL_DIR: Final = "SHARDRAG_MODEL_DIR"
#: Root directory for local data (Milvus Lite shard directories, emulated AWS state).
DATA_DIR: Final = "SHARDRAG_DATA_DIR"
#: Name of the DynamoDB document registry table.
REGISTRY_TABLE: Final = "SHARDRAG_REGISTRY_TABLE"
#: Name of the DynamoDB table of cached answers and the index version (set only where ``cache.answers`` is on;
#: unset, answers are cached in memory and the version is a file under ``<data_dir>/index``).
ANSWER_CACHE_TABLE: Final = "SHARDRAG_ANSWER_CACHE_TABLE"
#: Name of the DynamoDB table that holds the epoch clock (``shardrag.visibility``; the registry table): set on the
#: ingest function and on the query functions that read snapshots. Unset: a file under ``<data_dir>/index``.
EPOCH_TABLE: Final = "SHARDRAG_EPOCH_TABLE"
#: URL of the ingest queue: the ingest function hands the rest of a large object to a fresh invocation there.
INGEST_QUEUE_URL: Final = "SHARDRAG_INGEST_QUEUE_URL"
#: Name of the documents bucket.
DOCUMENTS_BUCKET: Final = "SHARDRAG_DOCUMENTS_BUCKET"
#: Powertools service name / log level (standard Powertools variables).
POWERTOOLS_SERVICE_NAME: Final = "POWERTOOLS_SERVICE_NAME"
LOG_LEVEL: Final = "POWERTOOLS_LOG_LEVEL"
POWERTOOLS_METRICS_NAMESPACE: Final = "POWERTOOLS_METRICS_NAMESPACE"
#: Bucket for index artefacts (BM25 term statistics); unset: files under ``<data_dir>/index`` beside the shards.
ARTIFACTS_BUCKET: Final = "SHARDRAG_ARTIFACTS_BUCKET"
#: ``s3://bucket/key`` of a zip holding ``model.onnx`` + ``tokenizer.json``, for a function whose package has no
#: room for the model layer (ingest: pymilvus and onnxruntime already fill most of Lambda's 250 MB).
MODEL_ARCHIVE: Final = "SHARDRAG_MODEL_ARCHIVE"
#: Name of the DynamoDB conversations table (chat sessions, one item per turn).
CONVERSATIONS_TABLE: Final = "SHARDRAG_CONVERSATIONS_TABLE"
#: Name of the Express query state machine's ARN, for the answer function's retrieval (StartSyncExecution).
QUERY_STATE_MACHINE_ARN: Final = "SHARDRAG_QUERY_STATE_MACHINE_ARN"
