"""Doing no work twice on the query path: a per-container cache of query embeddings, and an answer cache keyed
by everything an answer depends on, the index version included (``shardrag.caching.answers``)."""

from __future__ import annotations

from shardrag.caching.answers import (
    AnswerCache,
    AnswerCaching,
    DynamoDbAnswerCache,
    MemoryAnswerCache,
    cacheable,
)
from shardrag.caching.embeddings import QueryEmbeddingCache, normalise_question
from shardrag.caching.index_version import (
    DynamoDbIndexVersion,
    FileIndexVersion,
    IndexVersion,
    MemoryIndexVersion,
)

__all__ = [
    "AnswerCache",
    "AnswerCaching",
    "DynamoDbAnswerCache",
    "DynamoDbIndexVersion",
    "FileIndexVersion",
    "IndexVersion",
    "MemoryAnswerCache",
    "MemoryIndexVersion",
    "QueryEmbeddingCache",
    "cacheable",
    "normalise_question",
]
