"""BedrockGenerator against a real bedrock-runtime client with botocore's Stubber (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from shardrag.errors import GenerationFailed
from shardrag.generation import NOT_FOUND_ANSWER, BedrockGenerator, Generator, PromptBuilder
from shardrag.records import Hit

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
QUESTION = "How does the router choose a shard?"
HITS = [
    Hit(chunk_id="c1", doc_id="d1", score=0.9, text="The router hashes the doc id.", source="s3://b/1.md"),
    Hit(chunk_id="c2", doc_id="d2", score=0.8, text="Each shard is a Milvus Lite file.", source="s3://b/2.md"),
    Hit(chunk_id="c3", doc_id="d3", score=0.7, text="Bananas are yellow.", source="s3://b/3.md"),
]


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stubbed call never signs or sends, but the client must never find real credentials either.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def client() -> Any:
    return boto3.client("bedrock-runtime", region_name="us-east-1")


@pytest.fixture
def stubber(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


def converse_response(text: str, stop_reason: str = "end_turn") -> dict[str, Any]:
    """The shape Converse returns (output.message, stopReason, usage, metrics)."""
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason,
        "usage": {"inputTokens": 412, "outputTokens": 23, "totalTokens": 435},
        "metrics": {"latencyMs": 812},
    }


def expected_params(
    prompt_builder: PromptBuilder, *, max_tokens: int = 256, temperature: float = 0.0
) -> dict[str, Any]:
    prompt = prompt_builder.run(QUESTION, HITS)
    return {
        "modelId": MODEL_ID,
        "system": [{"text": prompt.system}],
        "messages": [{"role": "user", "content": [{"text": prompt.user}]}],
        "inferenceConfig": {"maxTokens": max_tokens, "temperature": temperature},
    }


def make_generator(client: Any, **kwargs: Any) -> BedrockGenerator:
    kwargs.setdefault("max_tokens", 256)
    return BedrockGenerator(MODEL_ID, client=client, prompt_builder=PromptBuilder(), **kwargs)


def test_sends_the_grounded_prompt_and_returns_the_cited_passages(client: Any, stubber: Stubber) -> None:
    # GIVEN Bedrock answering with a reply that cites passage 1 only
    stubber.add_response(
        "converse",
        converse_response("The router hashes the document id [1]."),
        expected_params(PromptBuilder(), temperature=0.2),
    )
    generator = make_generator(client, temperature=0.2)

    # WHEN asked
    answer = generator.run(QUESTION, HITS)

    # THEN the request carried system + user message + inference config (asserted by the stubber)
    # AND the answer is the reply text, citing only the passage it cites
    assert answer.text == "The router hashes the document id [1]."
    assert [(c.ref, c.chunk_id, c.source) for c in answer.citations] == [(1, "c1", "s3://b/1.md")]
    assert answer.model == f"bedrock:{MODEL_ID}"
    assert isinstance(generator, Generator)


def test_user_message_keeps_passages_inside_the_context(client: Any, stubber: Stubber) -> None:
    # GIVEN any reply
    stubber.add_response(
        "converse",
        converse_response("ok [2]"),
        {"modelId": MODEL_ID, "system": ANY, "messages": ANY, "inferenceConfig": ANY},
    )
    captured: list[dict[str, Any]] = []
    client.meta.events.register("provide-client-params.bedrock-runtime.Converse", _capture(captured))

    # WHEN asked
    make_generator(client).run(QUESTION, HITS)

    # THEN the passages sit inside <context> and the question after it
    user = captured[0]["messages"][0]["content"][0]["text"]
    assert user.startswith('<context>\n<passage id="1"')
    assert user.index("Bananas are yellow.") < user.index("</context>") < user.index(QUESTION)


def _capture(sink: list[dict[str, Any]]) -> Any:
    def handler(params: dict[str, Any], **_: Any) -> None:
        sink.append(params)

    return handler


def test_reply_without_citation_markers_cites_every_passage_given(client: Any, stubber: Stubber) -> None:
    stubber.add_response("converse", converse_response("It hashes the id."), expected_params(PromptBuilder()))
    answer = make_generator(client).run(QUESTION, HITS)
    assert [c.chunk_id for c in answer.citations] == ["c1", "c2", "c3"]


def test_text_blocks_are_joined_and_other_blocks_skipped(client: Any, stubber: Stubber) -> None:
    # GIVEN a reply with a reasoning block and two text blocks
    response = converse_response("First [2].")
    response["output"]["message"]["content"] = [
        {"reasoningContent": {"reasoningText": {"text": "thinking..."}}},
        {"text": "First [2]."},
        {"text": "Second."},
    ]
    stubber.add_response("converse", response, expected_params(PromptBuilder()))

    answer = make_generator(client).run(QUESTION, HITS)

    assert answer.text == "First [2].\nSecond."
    assert [c.chunk_id for c in answer.citations] == ["c2"]


def test_truncated_reply_at_max_tokens_is_still_an_answer(client: Any, stubber: Stubber) -> None:
    stubber.add_response("converse", converse_response("The router [1", "max_tokens"), expected_params(PromptBuilder()))
    answer = make_generator(client).run(QUESTION, HITS)
    assert answer.text == "The router [1"
    assert answer.citations


def test_no_hits_answers_not_found_without_calling_bedrock(client: Any, stubber: Stubber) -> None:
    # GIVEN no stubbed response at all: a call would fail the stubber
    answer = make_generator(client).run(QUESTION, [])
    assert answer.text == NOT_FOUND_ANSWER
    assert answer.citations == []


@pytest.mark.parametrize(
    ("code", "status", "fragment"),
    [
        ("ThrottlingException", 429, "throttled"),
        ("ValidationException", 400, "rejected"),
        ("AccessDeniedException", 403, "access denied"),
        ("ModelTimeoutException", 408, "timed out"),
        ("InternalServerException", 500, "request failed"),
    ],
)
def test_service_errors_become_generation_failed(
    client: Any, stubber: Stubber, code: str, status: int, fragment: str
) -> None:
    # GIVEN Bedrock answering with an error
    stubber.add_client_error(
        "converse",
        service_error_code=code,
        service_message="Too many requests, please wait." if status == 429 else "Bad thing.",
        http_status_code=status,
        expected_params=expected_params(PromptBuilder()),
    )

    # WHEN asked
    # THEN GenerationFailed names the model, the error code and what it means
    with pytest.raises(GenerationFailed) as raised:
        make_generator(client).run(QUESTION, HITS)
    message = raised.value.message
    assert code in message and MODEL_ID in message and fragment in message
    assert raised.value.status == 502


@pytest.mark.parametrize(
    "content",
    [[], [{"text": "   "}], [{"reasoningContent": {"reasoningText": {"text": "only thoughts"}}}]],
)
def test_empty_output_becomes_generation_failed(client: Any, stubber: Stubber, content: list[Any]) -> None:
    response = converse_response("x")
    response["output"]["message"]["content"] = content
    stubber.add_response("converse", response, expected_params(PromptBuilder()))
    with pytest.raises(GenerationFailed, match="empty answer"):
        make_generator(client).run(QUESTION, HITS)


@pytest.mark.parametrize("stop_reason", ["content_filtered", "model_context_window_exceeded"])
def test_unusable_stop_reasons_become_generation_failed(client: Any, stubber: Stubber, stop_reason: str) -> None:
    stubber.add_response("converse", converse_response("partial", stop_reason), expected_params(PromptBuilder()))
    with pytest.raises(GenerationFailed, match=stop_reason):
        make_generator(client).run(QUESTION, HITS)


def test_guardrail_message_is_returned_without_citations(client: Any, stubber: Stubber) -> None:
    stubber.add_response(
        "converse",
        converse_response("Sorry, I can't help with that.", "guardrail_intervened"),
        expected_params(PromptBuilder()),
    )
    answer = make_generator(client).run(QUESTION, HITS)
    assert answer.text == "Sorry, I can't help with that."
    assert answer.citations == []


def test_client_is_created_once_when_not_given() -> None:
    # GIVEN no client
    generator = BedrockGenerator(MODEL_ID, region="eu-west-1", timeout_s=12)

    # THEN one bedrock-runtime client was built for the region, with the read timeout and bounded retries
    client = generator._client
    assert client.meta.service_model.service_name == "bedrock-runtime"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.read_timeout == 12
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}


@pytest.mark.parametrize("kwargs", [{"max_tokens": 0}, {"temperature": 3.0}, {"timeout_s": 0}])
def test_constructor_rejects_invalid_arguments(client: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BedrockGenerator(MODEL_ID, client=client, **kwargs)
    with pytest.raises(ValueError):
        BedrockGenerator("", client=client)


def test_factory_builds_bedrock_from_settings(client: Any, stubber: Stubber) -> None:
    # GIVEN bedrock settings and an injected client
    from shardrag.config import GeneratorSettings
    from shardrag.generation import build_generator

    settings = GeneratorSettings(kind="bedrock", model_id=MODEL_ID, max_tokens=100, temperature=0.5)
    stubber.add_response(
        "converse",
        converse_response("ok [1]"),
        expected_params(PromptBuilder(), max_tokens=100, temperature=0.5),
    )

    # WHEN built and asked
    generator = build_generator(settings, bedrock_client=client)
    answer = generator.run(QUESTION, HITS)

    # THEN it is the Bedrock generator using that client and those inference settings
    assert isinstance(generator, BedrockGenerator)
    assert answer.model == f"bedrock:{MODEL_ID}"
