"""The chunk collection schema, shared by every shard.

Designed for the later retrieval features so that they extend it rather than rewrite it: ``tenant`` is the
partition key (tenant scoping), ``sparse`` holds BM25 beside the dense vector (hybrid), ``metadata`` is JSON
(filters on declared fields), ``source`` supports prefix filters, and ``version`` lets an overwrite write new
chunks before it deletes the stale ones, and ``epoch_from``/``epoch_to`` make that overwrite atomic to readers.
"""

from __future__ import annotations

from typing import Any, Final

from pymilvus import DataType, MilvusClient

DENSE_FIELD: Final = "dense"
#: BM25 document side (``shardrag.bm25``), searched with the inner product.
SPARSE_FIELD: Final = "sparse"
OUTPUT_FIELDS: Final = (
    "chunk_id",
    "doc_id",
    "text",
    "source",
    "title",
    "position",
    "version",
    "tenant",
    "metadata",
    "external_id",
    "epoch_from",
    "epoch_to",
)

_ID_MAX: Final = 512
#: External ids are object keys (S3: at most 1,024 bytes) or bulk lines' ``_id`` (held to 512 bytes).
EXTERNAL_ID_MAX: Final = 1024
_SOURCE_MAX: Final = 2048
TITLE_MAX: Final = 1024


def build_schema(dimension: int, max_text_bytes: int) -> Any:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=_ID_MAX)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=_ID_MAX)
    schema.add_field("tenant", DataType.VARCHAR, max_length=128, is_partition_key=True)
    schema.add_field("source", DataType.VARCHAR, max_length=_SOURCE_MAX)
    schema.add_field("title", DataType.VARCHAR, max_length=TITLE_MAX)
    schema.add_field("text", DataType.VARCHAR, max_length=max_text_bytes)
    schema.add_field("position", DataType.INT32)
    schema.add_field("version", DataType.VARCHAR, max_length=128)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("external_id", DataType.VARCHAR, max_length=EXTERNAL_ID_MAX)
    # What a query sees (``shardrag.visibility``): the epoch that wrote the row, and the one that retired it.
    schema.add_field("epoch_from", DataType.INT64)
    schema.add_field("epoch_to", DataType.INT64)
    schema.add_field(DENSE_FIELD, DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field(SPARSE_FIELD, DataType.SPARSE_FLOAT_VECTOR)
    return schema


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")
