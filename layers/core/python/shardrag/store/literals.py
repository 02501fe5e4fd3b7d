"""Milvus boolean-expression literals (no pymilvus import: the query handlers that compile filters must not
pay for it at cold start)."""

from __future__ import annotations

#: What a double-quoted literal cannot hold raw. Milvus's expression grammar (the server's and Milvus Lite's)
#: ends a literal at a raw CR or LF ("unterminated string literal"), and of the escapes both parsers decode
#: only these are shared (Milvus Lite 3.2.2 rejects ``\x``, ``\u``, octal, ``\b``, ``\f``, ``\v`` and ``\a``,
#: checked 2026-11-30); every other character, control characters included, is accepted raw.
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def escape_string(value: str) -> str:
    """A Milvus boolean-expression string literal that matches ``value`` exactly, whatever it contains."""
    return f'"{value.translate(_ESCAPES)}"'
