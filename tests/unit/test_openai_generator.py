"""OpenAICompatibleGenerator against a local chat-completions server on 127.0.0.1 (ephemeral port)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from shardrag.config import GeneratorSettings
from shardrag.errors import ConfigurationError, GenerationFailed
from shardrag.generation import (
    NOT_FOUND_ANSWER,
    Generator,
    OpenAICompatibleGenerator,
    PromptBuilder,
    build_generator,
    read_api_key,
)
from shardrag.generation.openai_compat import chat_completions_url
from shardrag.records import Hit
from shardrag.secrets import forget_secrets, read_secret

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
QUESTION = "How does the router choose a shard?"
HITS = [
    Hit(chunk_id="c1", doc_id="d1", score=0.9, text="The router hashes the doc id.", source="s3://b/1.md"),
    Hit(chunk_id="c2", doc_id="d2", score=0.8, text="Each shard is a Milvus Lite file.", source="s3://b/2.md"),
]


def completion(content: Any, finish_reason: str = "stop") -> dict[str, Any]:
    """The shape of a /v1/chat/completions response (as vLLM and TGI's Messages API return it)."""
    return {
        "id": "chatcmpl-8f2c1e",
        "object": "chat.completion",
        "created": 1718000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 321, "completion_tokens": 17, "total_tokens": 338},
    }


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclass
class FakeEndpoint:
    """What the server answers next, and what it received."""

    url: str
    reply: Reply = field(default_factory=Reply)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, payload: Any, status: int = 200) -> None:
        self.reply = Reply(status=status, body=json.dumps(payload).encode())


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    state = FakeEndpoint(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            state.requests.append(
                {
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(self.rfile.read(length)),
                }
            )
            reply = state.reply
            if reply.delay_s:
                time.sleep(reply.delay_s)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # A short poll interval: shutdown() waits up to one interval, for every test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_generator(url: str, **kwargs: Any) -> OpenAICompatibleGenerator:
    kwargs.setdefault("prompt_builder", PromptBuilder())
    return OpenAICompatibleGenerator(url, MODEL, **kwargs)


def test_posts_the_chat_request_and_parses_the_answer(endpoint: FakeEndpoint) -> None:
    # GIVEN an endpoint answering with a reply that cites passage 2
    endpoint.answer(completion("Each shard is a Milvus Lite file [2]."))
    generator = make_generator(endpoint.url, api_key="sk-test-123", max_tokens=200, temperature=0.3)

    # WHEN asked
    answer = generator.run(QUESTION, HITS)

    # THEN the request is a standard chat completion with the bearer token
    [request] = endpoint.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer sk-test-123"
    assert request["headers"]["Content-Type"] == "application/json"
    prompt = PromptBuilder().run(QUESTION, HITS)
    assert request["body"] == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ],
        "max_tokens": 200,
        "temperature": 0.3,
    }
    # AND the answer is the message content, citing the passage it cites
    assert answer.text == "Each shard is a Milvus Lite file [2]."
    assert [(c.ref, c.chunk_id) for c in answer.citations] == [(2, "c2")]
    assert answer.model == f"openai:{MODEL}"
    assert isinstance(generator, Generator)


def test_no_api_key_sends_no_authorization_header(endpoint: FakeEndpoint) -> None:
    endpoint.answer(completion("It hashes the id."))
    answer = make_generator(endpoint.url).run(QUESTION, HITS)
    assert "Authorization" not in endpoint.requests[0]["headers"]
    # A reply that cites nothing is cited with every passage it was given.
    assert [c.chunk_id for c in answer.citations] == ["c1", "c2"]


def test_content_parts_are_joined(endpoint: FakeEndpoint) -> None:
    endpoint.answer(completion([{"type": "text", "text": "Hashes "}, {"type": "text", "text": "[1]"}]))
    assert make_generator(endpoint.url).run(QUESTION, HITS).text == "Hashes [1]"


def test_no_hits_answers_not_found_without_calling_the_endpoint(endpoint: FakeEndpoint) -> None:
    answer = make_generator(endpoint.url).run(QUESTION, [])
    assert answer.text == NOT_FOUND_ANSWER and answer.citations == []
    assert endpoint.requests == []


def test_server_error_becomes_generation_failed(endpoint: FakeEndpoint) -> None:
    # GIVEN an endpoint failing with a 500 and an error body
    endpoint.answer({"object": "error", "message": "CUDA out of memory", "code": 500}, status=500)

    # WHEN asked
    # THEN GenerationFailed says what the server said
    with pytest.raises(GenerationFailed, match=r"HTTP 500: .*CUDA out of memory"):
        make_generator(endpoint.url).run(QUESTION, HITS)


def test_malformed_json_becomes_generation_failed(endpoint: FakeEndpoint) -> None:
    endpoint.reply = Reply(body=b'{"choices": [ {"message": ')
    with pytest.raises(GenerationFailed, match="malformed JSON"):
        make_generator(endpoint.url).run(QUESTION, HITS)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"error": {"message": "model not loaded"}}, "returned an error"),
        ({"choices": []}, "no choices"),
        ([1, 2], "not an object"),
        (completion(None), "without message content"),
        (completion("   "), "empty answer"),
    ],
)
def test_unusable_replies_become_generation_failed(endpoint: FakeEndpoint, payload: Any, match: str) -> None:
    endpoint.answer(payload)
    with pytest.raises(GenerationFailed, match=match):
        make_generator(endpoint.url).run(QUESTION, HITS)


def test_timeout_becomes_generation_failed(endpoint: FakeEndpoint) -> None:
    # GIVEN an endpoint slower than the timeout
    endpoint.reply = Reply(body=json.dumps(completion("late")).encode(), delay_s=2.0)

    # WHEN asked with a short timeout
    started = time.monotonic()
    with pytest.raises(GenerationFailed, match=r"timed out after 0.2s"):
        make_generator(endpoint.url, timeout_s=0.2).run(QUESTION, HITS)

    # THEN it gives up at the timeout, not when the server finally answers
    assert time.monotonic() - started < 1.5


def test_unreachable_endpoint_becomes_generation_failed() -> None:
    # GIVEN a loopback port nobody listens on (bound, then closed)
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(GenerationFailed, match="unreachable"):
        make_generator(f"http://127.0.0.1:{port}").run(QUESTION, HITS)


def test_redirects_are_refused_so_the_key_stays_with_the_endpoint(endpoint: FakeEndpoint) -> None:
    endpoint.reply = Reply(status=307, headers={"Location": "http://127.0.0.1:9/steal"})
    with pytest.raises(GenerationFailed, match="HTTP 307"):
        make_generator(endpoint.url, api_key="sk-secret").run(QUESTION, HITS)
    assert len(endpoint.requests) == 1


def test_proxy_environment_is_ignored(endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN proxy variables pointing nowhere
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    endpoint.answer(completion("ok [1]"))

    # THEN the request still goes straight to the endpoint
    assert make_generator(endpoint.url).run(QUESTION, HITS).text == "ok [1]"


def test_key_is_not_in_repr() -> None:
    assert "sk-secret" not in repr(make_generator("http://127.0.0.1:1", api_key="sk-secret"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8000", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/", "http://h:8000/v1/chat/completions"),
        ("https://h/v1", "https://h/v1/chat/completions"),
        ("https://h/prefix/v1/chat/completions", "https://h/prefix/v1/chat/completions"),
    ],
)
def test_endpoint_url_forms(given: str, expected: str) -> None:
    assert chat_completions_url(given) == expected


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/v1", "h:8000", ""])
def test_non_http_endpoint_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        make_generator(url)


# --- the factory and the Secrets Manager key -----------------------------------------------------------


@pytest.fixture
def secrets() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    forget_secrets()
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()
    forget_secrets()


def test_milvus_token_secrets_take_the_token_field_and_are_read_once(secrets: tuple[Any, Stubber]) -> None:
    client, stub = secrets
    stub.add_response(
        "get_secret_value", _secret_value('{"user": "u", "token": "milvus-token"}'), {"SecretId": "llm-key"}
    )
    assert read_secret("llm-key", client=client) == "milvus-token"
    assert read_secret("llm-key", client=client) == "milvus-token"  # cached: the stub answers once


def _secret_value(secret: str) -> dict[str, Any]:
    return {
        "ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:llm-key-AbCdEf",
        "Name": "llm-key",
        "VersionId": "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
        "SecretString": secret,
        "VersionStages": ["AWSCURRENT"],
    }


def test_factory_reads_the_key_from_secrets_manager_and_sends_it(
    endpoint: FakeEndpoint, secrets: tuple[Any, Stubber]
) -> None:
    # GIVEN settings naming an endpoint and a JSON secret holding the key
    client, stub = secrets
    stub.add_response("get_secret_value", _secret_value('{"api_key": "sk-from-secret"}'), {"SecretId": "llm-key"})
    settings = GeneratorSettings(
        kind="openai", model_id=MODEL, endpoint_url=endpoint.url, api_key_secret="llm-key", max_tokens=64
    )
    endpoint.answer(completion("ok [1]"))

    # WHEN the generator is built and asked
    generator = build_generator(settings, token_counter=len, secrets_client=client)
    generator.run(QUESTION, HITS)

    # THEN the key from the secret is the bearer token, and the settings reach the request
    assert isinstance(generator, OpenAICompatibleGenerator)
    assert generator.prompt_builder.count_tokens is len
    [request] = endpoint.requests
    assert request["headers"]["Authorization"] == "Bearer sk-from-secret"
    assert request["body"]["max_tokens"] == 64 and request["body"]["model"] == MODEL


def test_plain_string_secret_is_the_key(secrets: tuple[Any, Stubber]) -> None:
    client, stub = secrets
    stub.add_response("get_secret_value", _secret_value("  sk-plain \n"), {"SecretId": "llm-key"})
    assert read_api_key("llm-key", client=client) == "sk-plain"


def test_unreadable_secret_is_a_configuration_error(secrets: tuple[Any, Stubber]) -> None:
    client, stub = secrets
    stub.add_client_error("get_secret_value", "ResourceNotFoundException", "not found", 400)
    with pytest.raises(ConfigurationError, match="llm-key"):
        read_api_key("llm-key", client=client)


def test_json_secret_without_a_key_field_is_a_configuration_error(secrets: tuple[Any, Stubber]) -> None:
    client, stub = secrets
    stub.add_response("get_secret_value", _secret_value('{"user": "x"}'), {"SecretId": "llm-key"})
    with pytest.raises(ConfigurationError, match="none of the fields"):
        read_api_key("llm-key", client=client)


def test_factory_requires_an_endpoint_for_openai() -> None:
    with pytest.raises(ConfigurationError, match="endpoint_url"):
        build_generator(GeneratorSettings(kind="openai"))
