"""Builds the configured :class:`Generator` from settings: the one place that chooses an implementation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardrag.errors import ConfigurationError
from shardrag.generation.base import Generator
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.generation.prompt import PromptBuilder, TokenCounter
from shardrag.secrets import read_secret

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
    """An API key from Secrets Manager: the secret string, or its ``api_key`` (``apiKey``, ``token``, ``key``)
    field when it is JSON; unreadable or empty is a :class:`ConfigurationError` at cold start."""
    return read_secret(secret_id, client=client, region=region, fields=_SECRET_KEYS, what="API key secret")
