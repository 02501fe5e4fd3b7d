"""Any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, TGI's Messages API), over the stdlib.

No HTTP client dependency: the Lambda layer stays small, and one POST with a timeout is all this needs.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from shardrag.errors import ConfigurationError, GenerationFailed
from shardrag.generation.base import check_sampling
from shardrag.generation.prompt import NOT_FOUND_ANSWER, PromptBuilder
from shardrag.generation.stream import AnswerStream, fixed_stream
from shardrag.records import Answer, Hit

logger = logging.getLogger(__name__)

_CHAT_PATH = "/chat/completions"
#: Bytes of an error body quoted in a failure message: enough to see the server's reason, bounded for logs.
_ERROR_BODY_CHARS = 300
#: A reply larger than this is not a chat completion for any max_tokens this system allows.
_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def chat_completions_url(endpoint_url: str) -> str:
    """The chat completions URL for a base URL given with or without ``/v1`` or the full path."""
    parsed = urllib.parse.urlsplit(endpoint_url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        # urllib would also open file:// and ftp:// URLs; a settings value must never reach those.
        raise ConfigurationError(f"generator endpoint_url must be an http(s) URL, got {endpoint_url!r}")
    path = parsed.path.rstrip("/")
    if not path.endswith(_CHAT_PATH):
        path = path + _CHAT_PATH if path.endswith("/v1") else path + "/v1" + _CHAT_PATH
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, parsed.query, ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: following one would resend the bearer token to wherever the endpoint points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class OpenAICompatibleGenerator:
    """Answers through an OpenAI-compatible chat endpoint with a grounded prompt.

    ``api_key`` is sent as a bearer token when given; read it from Secrets Manager with
    :func:`shardrag.generation.factory.read_api_key` rather than from an environment variable. Environment
    proxies are ignored and redirects refused, so the request (and the key) goes only to ``endpoint_url``.
    """

    def __init__(
        self,
        endpoint_url: str,
        model: str,
        *,
        api_key: str | None = None,
        prompt_builder: PromptBuilder | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        timeout_s: float = 30.0,
    ) -> None:
        if not model:
            raise ValueError("model must not be empty")
        check_sampling(max_tokens=max_tokens, temperature=temperature, timeout_s=timeout_s)
        self.url = chat_completions_url(endpoint_url)
        self.model = model
        self.prompt_builder = prompt_builder or PromptBuilder()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout_s = timeout_s
        self._api_key = api_key or None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def __repr__(self) -> str:
        # Never show the key, even in a debug log of the generator.
        return f"OpenAICompatibleGenerator(url={self.url!r}, model={self.model!r})"

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def run(self, question: str, hits: Sequence[Hit]) -> Answer:
        """Answer ``question`` from ``hits``; raise :class:`GenerationFailed` when the endpoint gives none."""
        prompt = self.prompt_builder.run(question, hits)
        if not prompt.passages:
            # Nothing to ground an answer in: asking the model would only invite an invented one.
            return Answer(text=NOT_FOUND_ANSWER, citations=[], model=self.name)
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        reply = self._post(body)
        text, finish_reason = _parse(reply, self.url)
        usage = reply.get("usage")
        if not isinstance(usage, Mapping):
            usage = {}
        logger.info(
            "chat completion done",
            extra={
                "model": self.model,
                "finish_reason": finish_reason,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "passages": len(prompt.passages),
            },
        )
        if finish_reason == "length":
            logger.warning("chat completion truncated at max_tokens=%d", self.max_tokens)
        return prompt.answer(text, self.name)

    def complete(self, system: str, user: str, *, max_tokens: int) -> str:
        """One short reply to a prompt of the caller's (the chat condenser's rewrite), not streamed."""
        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": min(max_tokens, self.max_tokens),
            "temperature": 0.0,
        }
        text, _ = _parse(self._post(body), self.url)
        return text

    def stream(self, question: str, hits: Sequence[Hit]) -> AnswerStream:
        """Start answering with ``stream: true``: the endpoint sends ``chat.completion.chunk`` objects as
        server-sent ``data:`` lines, each with ``choices[0].delta.content``, then (asked for with
        ``stream_options.include_usage``) a chunk with empty ``choices`` and the ``usage``, then ``data: [DONE]``."""
        prompt = self.prompt_builder.run(question, hits)
        if not prompt.passages:
            return fixed_stream(Answer(text=NOT_FOUND_ANSWER, citations=[], model=self.name), [NOT_FOUND_ANSWER])
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = self._open(body, accept="text/event-stream")
        url = self.url

        def produce(stream: AnswerStream) -> Iterator[str]:
            done = False
            try:
                for raw in response:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue  # comments (": keep-alive"), event names, blank separators
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise GenerationFailed(f"chat endpoint {url} streamed malformed JSON") from exc
                    if not isinstance(chunk, Mapping):
                        continue
                    if "error" in chunk and not chunk.get("choices"):
                        detail = _shorten(json.dumps(chunk["error"]))
                        raise GenerationFailed(f"chat endpoint {url} streamed an error: {detail}")
                    if isinstance(chunk.get("usage"), Mapping):
                        stream.usage = {
                            "input_tokens": chunk["usage"].get("prompt_tokens"),
                            "output_tokens": chunk["usage"].get("completion_tokens"),
                        }
                    for choice in chunk.get("choices") or []:
                        if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                            continue
                        delta = choice.get("delta")
                        content = delta.get("content") if isinstance(delta, Mapping) else None
                        if isinstance(content, str) and content:
                            yield content
                        if choice.get("finish_reason"):
                            stream.finish_reason = str(choice["finish_reason"])
            except (TimeoutError, OSError) as exc:
                raise GenerationFailed(f"chat endpoint {url} stream broke: {exc}") from exc
            finally:
                response.close()
            if not done and not stream.finish_reason:
                raise GenerationFailed(f"chat endpoint {url} ended the stream before it finished")

        return AnswerStream(model=self.name, citations=prompt.citations(), produce=produce)

    def _open(self, body: Mapping[str, Any], *, accept: str) -> Any:
        """POST ``body`` and return the open response (the caller reads and closes it)."""
        headers = {"Content-Type": "application/json", "Accept": accept}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            return self._opener.open(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            raise GenerationFailed(f"chat endpoint {self.url} answered HTTP {exc.code}: {detail}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise GenerationFailed(f"chat endpoint {self.url} timed out after {self.timeout_s:g}s") from exc
            raise GenerationFailed(f"chat endpoint {self.url} unreachable: {exc.reason}") from exc
        except (TimeoutError, OSError) as exc:
            raise GenerationFailed(f"chat endpoint {self.url} failed: {exc}") from exc

    def _post(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        # The scheme was checked to be http(s) in __init__ (urllib would open file:// too).
        request = urllib.request.Request(
            self.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                raw = response.read(_MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            raise GenerationFailed(f"chat endpoint {self.url} answered HTTP {exc.code}: {detail}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise GenerationFailed(f"chat endpoint {self.url} timed out after {self.timeout_s:g}s") from exc
            raise GenerationFailed(f"chat endpoint {self.url} unreachable: {exc.reason}") from exc
        except TimeoutError as exc:
            # A timeout while reading the body surfaces bare, not wrapped in URLError.
            raise GenerationFailed(f"chat endpoint {self.url} timed out after {self.timeout_s:g}s") from exc
        except OSError as exc:
            raise GenerationFailed(f"chat endpoint {self.url} failed: {exc}") from exc
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise GenerationFailed(f"chat endpoint {self.url} sent more than {_MAX_RESPONSE_BYTES} bytes")
        try:
            reply = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GenerationFailed(f"chat endpoint {self.url} returned malformed JSON: {exc}") from exc
        if not isinstance(reply, Mapping):
            raise GenerationFailed(f"chat endpoint {self.url} returned JSON that is not an object")
        return reply


def _parse(reply: Mapping[str, Any], url: str) -> tuple[str, str]:
    """``choices[0].message.content`` (a string or a list of text parts) and the finish reason."""
    if "error" in reply and "choices" not in reply:
        raise GenerationFailed(f"chat endpoint {url} returned an error: {_shorten(json.dumps(reply['error']))}")
    choices = reply.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise GenerationFailed(f"chat endpoint {url} returned no choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, Mapping) else None
    if isinstance(content, list):
        # Some servers answer with content parts, as in the request format for multimodal input.
        content = "".join(
            part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
        )
    if not isinstance(content, str):
        raise GenerationFailed(f"chat endpoint {url} returned a choice without message content")
    text = content.strip()
    finish_reason = str(choice.get("finish_reason") or "")
    if not text:
        raise GenerationFailed(f"chat endpoint {url} returned an empty answer (finish_reason={finish_reason})")
    return text, finish_reason


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(_ERROR_BODY_CHARS * 4).decode("utf-8", "replace")
    except OSError:
        body = ""
    return _shorten(body) or exc.reason or "no detail"


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_BODY_CHARS else text[:_ERROR_BODY_CHARS] + "…"
