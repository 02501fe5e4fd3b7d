"""Milvus boolean-expression literals (no pymilvus import: the query handlers that compile filters must not
pay for it at cold start)."""

from __future__ import annotations


def escape_string(value: str) -> str:
    """A Milvus boolean-expression string literal with quotes and backslashes escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
