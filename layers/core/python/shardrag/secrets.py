"""Reading Milvus tokens and API keys from AWS Secrets Manager, once per container."""

from __future__ import annotations

import json
import threading
from typing import Any

_cache: dict[str, str] = {}
_lock = threading.Lock()


def read_secret(name: str, *, client: Any | None = None) -> str:
    """The secret's string value; a JSON secret with a ``token``/``api_key``/``password`` key yields that key.

    Cached for the life of the container: tokens are read at cold start, never put in environment variables.
    """
    with _lock:
        if name in _cache:
            return _cache[name]
    if client is None:
        import boto3

        client = boto3.client("secretsmanager")
    raw = str(client.get_secret_value(SecretId=name)["SecretString"])
    value = raw
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        for key in ("token", "api_key", "password"):
            if isinstance(parsed.get(key), str):
                value = parsed[key]
                break
    with _lock:
        _cache[name] = value
    return value
