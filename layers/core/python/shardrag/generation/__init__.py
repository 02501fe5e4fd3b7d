"""Answer generation: the :class:`Generator` protocol, its implementations and the grounded prompt.

``build_generator(settings.generator)`` picks the configured implementation. The model-backed generators are
imported on first use, so that importing this package does not load boto3/botocore where only the
extractive generator runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardrag.generation.base import Generator
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.generation.factory import build_generator, read_api_key
from shardrag.generation.prompt import (
    NOT_FOUND_ANSWER,
    Prompt,
    PromptBuilder,
    PromptPassage,
    TokenCounter,
    estimate_tokens,
)

if TYPE_CHECKING:
    from shardrag.generation.bedrock import BedrockGenerator
    from shardrag.generation.openai_compat import OpenAICompatibleGenerator

__all__ = [
    "NOT_FOUND_ANSWER",
    "BedrockGenerator",
    "ExtractiveGenerator",
    "Generator",
    "OpenAICompatibleGenerator",
    "Prompt",
    "PromptBuilder",
    "PromptPassage",
    "TokenCounter",
    "build_generator",
    "estimate_tokens",
    "read_api_key",
]

_LAZY = {
    "BedrockGenerator": "shardrag.generation.bedrock",
    "OpenAICompatibleGenerator": "shardrag.generation.openai_compat",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
