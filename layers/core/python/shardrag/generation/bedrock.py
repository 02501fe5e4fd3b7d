"""Amazon Bedrock through the Converse API: the deployed default generator."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from shardrag.errors import GenerationFailed
from shardrag.generation.base import check_sampling
from shardrag.generation.prompt import NOT_FOUND_ANSWER, PromptBuilder
from shardrag.generation.stream import AnswerStream, fixed_stream
from shardrag.records import Answer, Hit

if TYPE_CHECKING:
    from mypy_boto3_bedrock_runtime.client import BedrockRuntimeClient

logger = logging.getLogger(__name__)

#: Stop reasons after which the reply is not an answer, whatever text came with it.
_UNUSABLE_STOP_REASONS = frozenset(
    {"content_filtered", "malformed_model_output", "malformed_tool_use", "model_context_window_exceeded"}
)
#: Bedrock error codes worth naming in the message: the caller can act on them (back off, fix the model id).
_HINTS = {
    "ThrottlingException": "throttled; retry later or raise the model's quota",
    "ServiceUnavailableException": "service unavailable; retry later",
    "ModelTimeoutException": "the model timed out",
    "ModelNotReadyException": "the model is not ready; retry later",
    "ValidationException": "the request was rejected (model id, prompt size or inference parameters)",
    "AccessDeniedException": "access denied (IAM permission or model access not granted)",
    "ResourceNotFoundException": "model not found in this region",
}


class BedrockGenerator:
    """Answers through Bedrock ``converse`` with a grounded prompt; citations are the passages it cites.

    The client is built once, here, unless one is given (tests pass a stubbed client; handlers build the
    generator once per container through a cached factory). Retries are botocore's standard mode, bounded so
    that a throttled call fails within the state's timeout rather than after it.
    """

    def __init__(
        self,
        model_id: str,
        *,
        client: BedrockRuntimeClient | None = None,
        region: str | None = None,
        prompt_builder: PromptBuilder | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        timeout_s: float = 30.0,
    ) -> None:
        if not model_id:
            raise ValueError("model_id must not be empty")
        check_sampling(max_tokens=max_tokens, temperature=temperature, timeout_s=timeout_s)
        self.model_id = model_id
        self.prompt_builder = prompt_builder or PromptBuilder()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._client = client if client is not None else _make_client(region, timeout_s)

    @property
    def name(self) -> str:
        return f"bedrock:{self.model_id}"

    def run(self, question: str, hits: Sequence[Hit]) -> Answer:
        """Answer ``question`` from ``hits``; raise :class:`GenerationFailed` when Bedrock gives no answer."""
        prompt = self.prompt_builder.run(question, hits)
        if not prompt.passages:
            # Nothing to ground an answer in: asking the model would only invite an invented one.
            return Answer(text=NOT_FOUND_ANSWER, citations=[], model=self.name)
        try:
            response: Mapping[str, Any] = self._client.converse(
                modelId=self.model_id,
                system=[{"text": prompt.system}],
                messages=[{"role": "user", "content": [{"text": prompt.user}]}],
                inferenceConfig={"maxTokens": self.max_tokens, "temperature": self.temperature},
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "Unknown")
            hint = _HINTS.get(code, "request failed")
            raise GenerationFailed(
                f"Bedrock converse with {self.model_id} failed: {code}: {hint} ({error.get('Message', '')})"
            ) from exc
        except BotoCoreError as exc:
            # Connection errors, read timeouts, parameter validation: no response to interpret.
            raise GenerationFailed(f"Bedrock converse with {self.model_id} failed: {exc}") from exc

        text, stop_reason = _parse(response, self.model_id)
        usage = response.get("usage") or {}
        logger.info(
            "bedrock converse done",
            extra={
                "model_id": self.model_id,
                "stop_reason": stop_reason,
                "input_tokens": usage.get("inputTokens"),
                "output_tokens": usage.get("outputTokens"),
                "latency_ms": (response.get("metrics") or {}).get("latencyMs"),
                "passages": len(prompt.passages),
            },
        )
        if stop_reason == "max_tokens":
            logger.warning("bedrock answer truncated at max_tokens=%d", self.max_tokens)
        if stop_reason == "guardrail_intervened":
            # The text is the guardrail's message, not drawn from the passages: citing them would mislead.
            return Answer(text=text, citations=[], model=self.name)
        return prompt.answer(text, self.name)

    def complete(self, system: str, user: str, *, max_tokens: int) -> str:
        """One short reply to a prompt of the caller's (the chat condenser's rewrite), not streamed."""
        try:
            response: Mapping[str, Any] = self._client.converse(
                modelId=self.model_id,
                system=[{"text": system}],
                messages=[{"role": "user", "content": [{"text": user}]}],
                inferenceConfig={"maxTokens": min(max_tokens, self.max_tokens), "temperature": 0.0},
            )
        except ClientError as exc:
            raise GenerationFailed(_describe_client_error(self.model_id, exc, "converse")) from exc
        except BotoCoreError as exc:
            raise GenerationFailed(f"Bedrock converse with {self.model_id} failed: {exc}") from exc
        text, _ = _parse(response, self.model_id)
        return text

    def stream(self, question: str, hits: Sequence[Hit]) -> AnswerStream:
        """Start answering through ``ConverseStream``; the text arrives as ``contentBlockDelta`` events.

        A failure before the stream opens raises :class:`GenerationFailed` here; one inside the stream (an
        exception event: throttling, a model stream error) raises it from the iteration.
        """
        prompt = self.prompt_builder.run(question, hits)
        if not prompt.passages:
            return fixed_stream(Answer(text=NOT_FOUND_ANSWER, citations=[], model=self.name), [NOT_FOUND_ANSWER])
        try:
            response = self._client.converse_stream(
                modelId=self.model_id,
                system=[{"text": prompt.system}],
                messages=[{"role": "user", "content": [{"text": prompt.user}]}],
                inferenceConfig={"maxTokens": self.max_tokens, "temperature": self.temperature},
            )
        except ClientError as exc:
            raise GenerationFailed(_describe_client_error(self.model_id, exc, "converse_stream")) from exc
        except BotoCoreError as exc:
            raise GenerationFailed(f"Bedrock converse_stream with {self.model_id} failed: {exc}") from exc
        events = response["stream"]
        model_id = self.model_id

        def produce(stream: AnswerStream) -> Iterator[str]:
            try:
                for event in events:
                    if "contentBlockDelta" in event:
                        text = (event["contentBlockDelta"].get("delta") or {}).get("text")
                        if isinstance(text, str):
                            yield text
                    elif "messageStop" in event:
                        stream.finish_reason = str(event["messageStop"].get("stopReason", ""))
                        if stream.finish_reason in _UNUSABLE_STOP_REASONS:
                            raise GenerationFailed(
                                f"Bedrock model {model_id} gave no usable answer (stopReason={stream.finish_reason})"
                            )
                    elif "metadata" in event:
                        usage = event["metadata"].get("usage") or {}
                        stream.usage = {
                            "input_tokens": usage.get("inputTokens"),
                            "output_tokens": usage.get("outputTokens"),
                        }
                    else:
                        # An exception event (the boto3 parser raises most of them as EventStreamError).
                        raw: Mapping[str, Any] = event
                        for name in _STREAM_EXCEPTIONS:
                            if name in raw:
                                message = (raw[name] or {}).get("message", "")
                                raise GenerationFailed(f"Bedrock stream from {model_id} failed: {name}: {message}")
            except ClientError as exc:  # botocore's EventStreamError for an exception event
                raise GenerationFailed(_describe_client_error(model_id, exc, "converse_stream")) from exc
            except BotoCoreError as exc:
                raise GenerationFailed(f"Bedrock stream from {model_id} broke: {exc}") from exc
            finally:
                close = getattr(events, "close", None)
                if close is not None:
                    close()

        return AnswerStream(model=self.name, citations=prompt.citations(), produce=produce)


#: Exception members of ``ConverseStreamOutput`` (each may arrive instead of an event, mid-stream).
_STREAM_EXCEPTIONS = (
    "internalServerException",
    "modelStreamErrorException",
    "validationException",
    "throttlingException",
    "serviceUnavailableException",
)


def _describe_client_error(model_id: str, exc: ClientError, operation: str) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    # An exception event inside a stream names its type in camel case (throttlingException).
    code = code[:1].upper() + code[1:]
    hint = _HINTS.get(code, "request failed")
    return f"Bedrock {operation} with {model_id} failed: {code}: {hint} ({error.get('Message', '')})"


def _parse(response: Mapping[str, Any], model_id: str) -> tuple[str, str]:
    """The reply text (text blocks joined; reasoning and other blocks skipped) and the stop reason."""
    stop_reason = str(response.get("stopReason", ""))
    if stop_reason in _UNUSABLE_STOP_REASONS:
        raise GenerationFailed(f"Bedrock model {model_id} gave no usable answer (stopReason={stop_reason})")
    message = (response.get("output") or {}).get("message") or {}
    blocks = message.get("content") or []
    text = "\n".join(
        block["text"] for block in blocks if isinstance(block, Mapping) and isinstance(block.get("text"), str)
    ).strip()
    if not text:
        raise GenerationFailed(f"Bedrock model {model_id} returned an empty answer (stopReason={stop_reason})")
    return text, stop_reason


def _make_client(region: str | None, timeout_s: float) -> BedrockRuntimeClient:
    # Imported here so that importing the generation package does not load boto3 (the extractive path and
    # the unit tests that do not need it stay light).
    import boto3
    from botocore.config import Config

    config = Config(
        read_timeout=timeout_s,
        connect_timeout=min(timeout_s, 10.0),
        retries={"mode": "standard", "total_max_attempts": 3},
    )
    return boto3.client("bedrock-runtime", region_name=region, config=config)
