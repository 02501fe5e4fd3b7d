"""Reading Milvus tokens and API keys from AWS Secrets Manager, once per container.

One reader for every secret: read at cold start, so a missing, empty or malformed secret is a
:class:`ConfigurationError` naming the secret (never its value), and the value is cached for the life of the
container rather than put in an environment variable.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

from shardrag.errors import ConfigurationError

#: Fields of a JSON secret that hold the value, in order of preference.
SECRET_FIELDS: Final = ("token", "api_key", "apiKey", "password", "key")

_cache: dict[tuple[str, str | None], str] = {}
_lock = threading.Lock()


def read_secret(
    name: str,
    *,
    client: Any | None = None,
    region: str | None = None,
    fields: Sequence[str] = SECRET_FIELDS,
    what: str = "secret",
    check: Callable[[str], str | None] | None = None,
) -> str:
    """The secret's string value, or for a JSON secret the first of ``fields`` it holds.

    A JSON secret with ``username`` and ``password`` and no ``token`` (Secrets Manager's shape for generated
    database credentials) gives ``"username:password"``, the form of a Milvus token. ``check`` returns why a value
    is unusable (None when it is fine); an unusable value is an error and is not cached, so that a secret written
    later (a Milvus host publishing its CA certificate at first boot) is picked up by the next call.
    """
    with _lock:
        if (name, region) in _cache:
            return _cache[(name, region)]
    if client is None:
        import boto3

        client = boto3.client("secretsmanager", region_name=region)
    try:
        response = client.get_secret_value(SecretId=name)
    except Exception as exc:  # botocore's ClientError and connection errors alike: all mean "no value".
        raise ConfigurationError(f"cannot read {what} {name!r}: {type(exc).__name__}") from exc
    raw = response.get("SecretString")
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigurationError(f"{what} {name!r} has no SecretString")
    value = raw.strip()
    if value.startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigurationError(f"{what} {name!r} looks like JSON but does not parse") from None
        if (
            isinstance(parsed, dict)
            and "token" not in parsed
            and isinstance(parsed.get("username"), str)
            and isinstance(parsed.get("password"), str)
        ):
            parsed = {"token": f"{parsed['username']}:{parsed['password']}"}
        found = [parsed.get(f) for f in fields if isinstance(parsed, dict) and isinstance(parsed.get(f), str)]
        if not found or not found[0]:
            raise ConfigurationError(f"{what} {name!r} has none of the fields {', '.join(fields)}")
        value = found[0]
    if check is not None and (problem := check(value)):
        raise ConfigurationError(f"{what} {name!r} {problem}")
    with _lock:
        _cache[(name, region)] = value
    return value


def forget_secrets() -> None:
    """Drop cached values (tests; a rotated secret is picked up by a new container)."""
    with _lock:
        _cache.clear()
