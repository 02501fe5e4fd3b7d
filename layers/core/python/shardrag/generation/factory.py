"""Builds the configured :class:`Generator` from settings: the one place that chooses an implementation."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from shardrag.errors import ConfigurationError
from shardrag.generation.base import Generator
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.generation.prompt import PromptBuilder, TokenCounter

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime.client import BedrockRuntimeClient
    from shardrag.config import GeneratorSettings

#: Keys under which a JSON secret may hold the key (a plain-string secret is the key itself).
_SECRET_KEYS = ("api_key", "apiKey", "token", "key")


def build_generator(
    settings: GeneratorSettings,
    *,
    token_counter: TokenCounter | None = None,
    bedrock_client: BedrockRuntimeClient | None = None,
    secrets_client: Any | None = None,
) -> Generator:
    """The generator ``settings`` describe.

    ``token_counter`` counts prompt tokens (the embedder's ``count_tokens`` fits; default: a chars/4
    estimate). The clients are for tests and for callers that already hold one; otherwise each is created
    here, once. Raises :class:`ConfigurationError` when the settings cannot produce a working generator.
    """
    if settings.kind == "extractive":
        return ExtractiveGenerator(passages=settings.extractive_passages)

    prompt_builder = PromptBuilder(token_budget=settings.context_token_budget, token_counter=token_counter)
    if settings.kind == "bedrock":
        from shardrag.generation.bedrock import BedrockGenerator

        return BedrockGenerator(
            settings.model_id,
            client=bedrock_client,
            region=settings.region,
            prompt_builder=prompt_builder,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            timeout_s=settings.timeout_s,
        )
    if settings.kind == "openai":
        from shardrag.generation.openai_compat import OpenAICompatibleGenerator

        if not settings.endpoint_url:
            raise ConfigurationError("generator.endpoint_url is required when generator.kind is 'openai'")
        api_key = None
        if settings.api_key_secret:
            api_key = read_api_key(settings.api_key_secret, client=secrets_client, region=settings.region)
        return OpenAICompatibleGenerator(
            settings.endpoint_url,
            settings.model_id,
            api_key=api_key,
            prompt_builder=prompt_builder,
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            timeout_s=settings.timeout_s,
        )
    raise ConfigurationError(f"unknown generator kind {settings.kind!r}")


def read_api_key(secret_id: str, *, client: Any | None = None, region: str | None = None) -> str:
    """An API key from Secrets Manager: the secret string, or its ``api_key`` field when it is JSON.

    Read at cold start (the factory runs once per container), so a missing or unreadable secret is a
    :class:`ConfigurationError`; the message names the secret, never its value.
    """
    if client is None:
        import boto3

        client = boto3.client("secretsmanager", region_name=region)
    try:
        response = client.get_secret_value(SecretId=secret_id)
    except Exception as exc:  # botocore's ClientError and connection errors alike: all mean "no key".
        raise ConfigurationError(f"cannot read API key secret {secret_id!r}: {type(exc).__name__}") from exc
    secret = response.get("SecretString")
    if not isinstance(secret, str) or not secret.strip():
        raise ConfigurationError(f"API key secret {secret_id!r} has no SecretString")
    secret = secret.strip()
    if secret.startswith("{"):
        try:
            fields = json.loads(secret)
        except json.JSONDecodeError:
            raise ConfigurationError(f"API key secret {secret_id!r} looks like JSON but does not parse") from None
        for key in _SECRET_KEYS:
            value = fields.get(key) if isinstance(fields, dict) else None
            if isinstance(value, str) and value:
                return value
        raise ConfigurationError(f"API key secret {secret_id!r} has none of the fields {', '.join(_SECRET_KEYS)}")
    return secret
