"""The rerank stage: BedrockReranker against a real bedrock-agent-runtime client with botocore's Stubber (no
network), NoReranker, the ARN and the settings."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from pydantic import ValidationError
from shardrag.errors import ConfigurationError, ShardRagError
from shardrag.records import Hit
from shardrag.rerank import (
    MAX_SOURCES_PER_CALL,
    MAX_TEXT_CHARS,
    MODEL_ARN_PATTERN,
    BedrockReranker,
    NoReranker,
    Reranker,
    RerankFailed,
    RerankSettings,
    build_reranker,
    model_arn,
)

REGION = "us-east-1"
MODEL_ID = "cohere.rerank-v3-5:0"
ARN = f"arn:aws:bedrock:{REGION}::foundation-model/{MODEL_ID}"
QUESTION = "How does the router choose a shard?"
HITS = [
    Hit(
        chunk_id="c1",
        doc_id="d1",
        score=0.91,
        text="Bananas are yellow.",
        source="s3://b/1.md",
        title="Fruit",
        position=3,
        shard=2,
        metadata={"lang": "en"},
    ),
    Hit(chunk_id="c2", doc_id="d2", score=0.85, text="The router hashes the doc id.", source="s3://b/2.md", shard=0),
    Hit(chunk_id="c3", doc_id="d3", score=0.80, text="Each shard is a Milvus Lite file.", source="s3://b/3.md"),
]


@pytest.fixture(autouse=True)
def _fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stubbed call never signs or sends, but the client must never find real credentials either.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def client() -> Any:
    return boto3.client("bedrock-agent-runtime", region_name=REGION)


@pytest.fixture
def stubber(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


def rerank_params(
    texts: list[str],
    number_of_results: int,
    *,
    query: str = QUESTION,
    extra_fields: dict[str, Any] | None = None,
    next_token: str | None = None,
) -> dict[str, Any]:
    """The exact request the reranker must send."""
    configuration: dict[str, Any] = {"modelArn": ARN}
    if extra_fields:
        configuration["additionalModelRequestFields"] = extra_fields
    params: dict[str, Any] = {
        "queries": [{"type": "TEXT", "textQuery": {"text": query}}],
        "sources": [
            {"type": "INLINE", "inlineDocumentSource": {"type": "TEXT", "textDocument": {"text": text}}}
            for text in texts
        ],
        "rerankingConfiguration": {
            "type": "BEDROCK_RERANKING_MODEL",
            "bedrockRerankingConfiguration": {
                "numberOfResults": number_of_results,
                "modelConfiguration": configuration,
            },
        },
    }
    if next_token is not None:
        params["nextToken"] = next_token
    return params


def rerank_response(scores: list[tuple[int, float]], next_token: str | None = None) -> dict[str, Any]:
    """The shape Rerank returns: results best first, each with the index of the source it scores."""
    response: dict[str, Any] = {"results": [{"index": i, "relevanceScore": s} for i, s in scores]}
    if next_token is not None:
        response["nextToken"] = next_token
    return response


def many_hits(count: int) -> list[Hit]:
    return [Hit(chunk_id=f"c{i}", doc_id=f"d{i}", score=1.0 - i / 10_000, text=f"passage {i}") for i in range(count)]


def test_reorders_by_relevance_and_replaces_only_the_score(client: Any, stubber: Stubber) -> None:
    # GIVEN the model finding the second hit most relevant and the first least
    stubber.add_response(
        "rerank",
        rerank_response([(1, 0.98), (2, 0.41), (0, 0.02)]),
        rerank_params([h.text for h in HITS], 3),
    )
    reranker = BedrockReranker(MODEL_ID, client=client)

    # WHEN reranking for three hits
    ranked = reranker.run(QUESTION, HITS, top_n=3)

    # THEN the request named the question, every text and the model ARN (asserted by the stubber)
    # AND the hits come back in the model's order with its scores, every other field unchanged
    assert [h.chunk_id for h in ranked] == ["c2", "c3", "c1"]
    assert [h.score for h in ranked] == [0.98, 0.41, 0.02]
    assert ranked[2] == HITS[0].model_copy(update={"score": 0.02})
    assert ranked[2].metadata == {"lang": "en"} and ranked[2].shard == 2 and ranked[2].position == 3
    assert reranker.name == f"bedrock:{MODEL_ID}"
    assert isinstance(reranker, Reranker)


def test_asks_for_top_n_and_keeps_at_most_top_n(client: Any, stubber: Stubber) -> None:
    stubber.add_response("rerank", rerank_response([(2, 0.7), (1, 0.6)]), rerank_params([h.text for h in HITS], 2))
    ranked = BedrockReranker(MODEL_ID, client=client).run(QUESTION, HITS, top_n=2)
    assert [h.chunk_id for h in ranked] == ["c3", "c2"]


def test_number_of_results_never_exceeds_the_documents_sent(client: Any, stubber: Stubber) -> None:
    # GIVEN top_n above the number of hits: asking for more results than documents would be refused
    stubber.add_response(
        "rerank", rerank_response([(0, 0.5), (1, 0.4), (2, 0.3)]), rerank_params([h.text for h in HITS], 3)
    )
    ranked = BedrockReranker(MODEL_ID, client=client).run(QUESTION, HITS, top_n=50)
    assert len(ranked) == 3


def test_extra_results_beyond_top_n_are_dropped(client: Any, stubber: Stubber) -> None:
    # GIVEN a reply with more results than asked for (the contract does not forbid it)
    stubber.add_response(
        "rerank", rerank_response([(0, 0.5), (1, 0.9), (2, 0.3)]), rerank_params([h.text for h in HITS], 1)
    )
    ranked = BedrockReranker(MODEL_ID, client=client).run(QUESTION, HITS, top_n=1)
    assert [(h.chunk_id, h.score) for h in ranked] == [("c2", 0.9)]


def test_candidates_beyond_max_candidates_are_not_sent(client: Any, stubber: Stubber) -> None:
    # GIVEN 150 fused hits and room for 100
    hits = many_hits(150)
    stubber.add_response(
        "rerank", rerank_response([(99, 0.9), (0, 0.8)]), rerank_params([h.text for h in hits[:100]], 2)
    )

    # WHEN reranking
    ranked = BedrockReranker(MODEL_ID, client=client, max_candidates=100).run(QUESTION, hits, top_n=2)

    # THEN only the head of the fused order was sent, and the last one sent can still win
    assert [h.chunk_id for h in ranked] == ["c99", "c0"]


def test_more_candidates_than_one_call_holds_are_split_and_merged_by_score(client: Any, stubber: Stubber) -> None:
    # GIVEN 1500 candidates: the API takes at most 1000 sources per call
    hits = many_hits(1500)
    texts = [h.text for h in hits]
    stubber.add_response("rerank", rerank_response([(5, 0.70), (999, 0.40), (0, 0.10)]), rerank_params(texts[:1000], 3))
    stubber.add_response("rerank", rerank_response([(499, 0.95), (0, 0.40), (7, 0.05)]), rerank_params(texts[1000:], 3))
    reranker = BedrockReranker(MODEL_ID, client=client, max_candidates=1500)

    # WHEN reranking
    ranked = reranker.run(QUESTION, hits, top_n=3)

    # THEN two calls of 1000 and 500 went out, and the second call's indices point past the first batch
    # AND equal scores keep the fused order
    assert reranker.batch_size == MAX_SOURCES_PER_CALL
    assert [(h.chunk_id, h.score) for h in ranked] == [("c1499", 0.95), ("c5", 0.70), ("c999", 0.40)]


def test_batch_size_bounds_each_call(client: Any, stubber: Stubber) -> None:
    texts = [h.text for h in HITS]
    stubber.add_response("rerank", rerank_response([(1, 0.2), (0, 0.1)]), rerank_params(texts[:2], 2))
    stubber.add_response("rerank", rerank_response([(0, 0.3)]), rerank_params(texts[2:], 1))
    ranked = BedrockReranker(MODEL_ID, client=client, batch_size=2).run(QUESTION, HITS, top_n=2)
    assert [h.chunk_id for h in ranked] == ["c3", "c2"]


def test_long_texts_and_question_are_cut_to_the_api_limit(client: Any, stubber: Stubber) -> None:
    # GIVEN a passage and a question longer than the 32,000 characters the API accepts
    long_text = "x" * (MAX_TEXT_CHARS + 5000)
    long_question = "q" * (MAX_TEXT_CHARS + 1)
    hits = [HITS[0].model_copy(update={"text": long_text}), HITS[1]]
    stubber.add_response(
        "rerank",
        rerank_response([(0, 0.6), (1, 0.5)]),
        rerank_params(["x" * MAX_TEXT_CHARS, HITS[1].text], 2, query="q" * MAX_TEXT_CHARS),
    )

    ranked = BedrockReranker(MODEL_ID, client=client).run(long_question, hits, top_n=2)

    # THEN the request carried the cut texts, and the hit returned keeps its full text
    assert ranked[0].text == long_text


def test_max_text_chars_cuts_shorter(client: Any, stubber: Stubber) -> None:
    stubber.add_response(
        "rerank",
        rerank_response([(0, 0.6)]),
        rerank_params(["Banan", "The r", "Each "], 1, query="How d"),
    )
    BedrockReranker(MODEL_ID, client=client, max_text_chars=5).run(QUESTION, HITS, top_n=1)


def test_additional_model_request_fields_are_passed_through(client: Any, stubber: Stubber) -> None:
    fields = {"max_tokens_per_doc": 512}
    stubber.add_response(
        "rerank", rerank_response([(0, 0.6)]), rerank_params([h.text for h in HITS], 1, extra_fields=fields)
    )
    BedrockReranker(MODEL_ID, client=client, additional_model_request_fields=fields).run(QUESTION, HITS, top_n=1)


def test_follows_next_token_until_enough_results(client: Any, stubber: Stubber) -> None:
    texts = [h.text for h in HITS]
    stubber.add_response("rerank", rerank_response([(2, 0.9)], next_token="page-2"), rerank_params(texts, 2))
    stubber.add_response("rerank", rerank_response([(0, 0.5)]), rerank_params(texts, 2, next_token="page-2"))
    ranked = BedrockReranker(MODEL_ID, client=client).run(QUESTION, HITS, top_n=2)
    assert [h.chunk_id for h in ranked] == ["c3", "c1"]


def test_throttling_raises_rerank_failed(client: Any, stubber: Stubber) -> None:
    # GIVEN Bedrock refusing the call for throttling
    stubber.add_client_error(
        "rerank",
        service_error_code="ThrottlingException",
        service_message="Too many requests, please wait before trying again.",
        http_status_code=429,
        expected_params=rerank_params([h.text for h in HITS], 3),
    )

    # WHEN reranking THEN a RerankFailed names the code, so the caller can fall back and flag why
    with pytest.raises(RerankFailed, match="ThrottlingException: throttled") as caught:
        BedrockReranker(MODEL_ID, client=client).run(QUESTION, HITS, top_n=3)
    assert caught.value.reason == "ThrottlingException"
    assert isinstance(caught.value, ShardRagError)
    assert (caught.value.status, caught.value.code) == (502, "rerank_failed")


def test_access_denied_raises_rerank_failed(client: Any, stubber: Stubber) -> None:
    stubber.add_client_error("rerank", service_error_code="AccessDeniedException", http_status_code=403)
    with pytest.raises(RerankFailed, match="access denied") as caught:
        BedrockReranker(MODEL_ID, client=client).run(QUESTION, HITS, top_n=1)
    assert caught.value.reason == "AccessDeniedException"


def test_connection_error_raises_rerank_failed() -> None:
    class Unreachable:
        meta = SimpleNamespace(region_name=REGION)

        def rerank(self, **_: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="https://bedrock-agent-runtime.us-east-1.amazonaws.com")

    with pytest.raises(RerankFailed) as caught:
        BedrockReranker(MODEL_ID, client=Unreachable()).run(QUESTION, HITS, top_n=1)
    assert caught.value.reason == "connection"


@pytest.mark.parametrize(
    "results",
    [
        [(3, 0.9)],  # names a document that was not sent
        [(0, 0.9), (0, 0.8)],  # the same document twice
        [(1, float("nan"))],  # no usable score
    ],
)
def test_unusable_results_raise_rerank_failed(client: Any, stubber: Stubber, results: list[tuple[int, float]]) -> None:
    stubber.add_response("rerank", rerank_response(results))
    with pytest.raises(RerankFailed) as caught:
        BedrockReranker(MODEL_ID, client=client).run(QUESTION, HITS, top_n=3)
    assert caught.value.reason == "malformed_response"


def test_hits_without_text_are_refused_before_any_call(client: Any, stubber: Stubber) -> None:
    # GIVEN ids-only hits (the text was stripped): nothing to score them on, and no call is made
    hits = [h.model_copy(update={"text": ""}) for h in HITS]
    with pytest.raises(RerankFailed) as caught:
        BedrockReranker(MODEL_ID, client=client).run(QUESTION, hits, top_n=3)
    assert caught.value.reason == "no_text"


def test_blank_question_is_refused_before_any_call(client: Any, stubber: Stubber) -> None:
    with pytest.raises(RerankFailed) as caught:
        BedrockReranker(MODEL_ID, client=client).run("  ", HITS, top_n=3)
    assert caught.value.reason == "empty_question"


def test_no_hits_make_no_call(client: Any, stubber: Stubber) -> None:
    assert BedrockReranker(MODEL_ID, client=client).run(QUESTION, [], top_n=3) == []


@pytest.mark.parametrize("reranker", [NoReranker(), None])
def test_top_n_below_one_is_a_programming_error(client: Any, reranker: Reranker | None) -> None:
    with pytest.raises(ValueError, match="top_n"):
        (reranker or BedrockReranker(MODEL_ID, client=client)).run(QUESTION, HITS, top_n=0)


def test_no_reranker_is_the_identity() -> None:
    reranker = NoReranker()
    assert reranker.run(QUESTION, HITS, top_n=2) == HITS[:2]
    assert reranker.run(QUESTION, HITS, top_n=10) == HITS
    assert reranker.name == "none"
    assert isinstance(reranker, Reranker)


def test_model_arn_from_id_and_region() -> None:
    assert (
        model_arn("amazon.rerank-v1:0", "us-west-2") == "arn:aws:bedrock:us-west-2::foundation-model/amazon.rerank-v1:0"
    )
    assert model_arn(MODEL_ID, "cn-north-1") == f"arn:aws-cn:bedrock:cn-north-1::foundation-model/{MODEL_ID}"
    assert model_arn(MODEL_ID, "us-gov-west-1").startswith("arn:aws-us-gov:bedrock:us-gov-west-1::")


def test_model_arn_given_in_full_is_kept() -> None:
    arn = "arn:aws:bedrock:eu-central-1::foundation-model/cohere.rerank-v3-5:0"
    assert model_arn(arn, "us-east-1") == arn
    assert model_arn(arn, None) == arn


@pytest.mark.parametrize(
    ("model_id", "region"),
    [("", REGION), (MODEL_ID, None), ("Cohere Rerank", REGION), ("arn:aws:s3:::bucket/key", REGION)],
)
def test_model_arn_refuses_what_the_service_would(model_id: str, region: str | None) -> None:
    with pytest.raises(ValueError):
        model_arn(model_id, region)


def test_region_comes_from_the_client_unless_given(client: Any) -> None:
    assert BedrockReranker(MODEL_ID, client=client).model_arn == ARN
    explicit = BedrockReranker(MODEL_ID, client=client, region="eu-central-1")
    assert explicit.model_arn == f"arn:aws:bedrock:eu-central-1::foundation-model/{MODEL_ID}"


@pytest.mark.parametrize(
    "kwargs", [{"max_candidates": 0}, {"batch_size": MAX_SOURCES_PER_CALL + 1}, {"max_text_chars": 0}]
)
def test_constructor_checks_its_bounds(client: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BedrockReranker(MODEL_ID, client=client, **kwargs)


def test_build_reranker_defaults_to_none() -> None:
    assert isinstance(build_reranker(RerankSettings()), NoReranker)


def test_build_reranker_bedrock(client: Any, stubber: Stubber) -> None:
    settings = RerankSettings(kind="bedrock", model_id="amazon.rerank-v1:0", region="us-west-2", max_candidates=20)
    reranker = build_reranker(settings, client=client)
    assert isinstance(reranker, BedrockReranker)
    assert reranker.model_arn == "arn:aws:bedrock:us-west-2::foundation-model/amazon.rerank-v1:0"
    assert reranker.max_candidates == 20


def test_build_reranker_creates_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ca-central-1")
    monkeypatch.delenv("AWS_REGION", raising=False)
    reranker = build_reranker(RerankSettings(kind="bedrock"))
    assert isinstance(reranker, BedrockReranker)
    assert reranker.model_arn == f"arn:aws:bedrock:ca-central-1::foundation-model/{MODEL_ID}"


def test_build_reranker_reports_bad_settings_as_configuration_error(client: Any) -> None:
    with pytest.raises(ConfigurationError, match="not a valid Bedrock model ARN"):
        build_reranker(RerankSettings(kind="bedrock", model_id="no spaces please"), client=client)


def test_settings_are_strict() -> None:
    with pytest.raises(ValidationError):
        RerankSettings.model_validate({"kind": "bedrock", "topn": 3})
    with pytest.raises(ValidationError):
        RerankSettings(max_candidates=MAX_SOURCES_PER_CALL + 1)
    with pytest.raises(ValidationError):
        RerankSettings(region="US East")


def test_limits_match_the_service_model() -> None:
    # The constants mirror botocore's model; botocore checks only minimums, so drift would reach the service.
    model = botocore.session.get_session().get_service_model("bedrock-agent-runtime")
    assert model.shape_for("RerankSourcesList").metadata["max"] == MAX_SOURCES_PER_CALL
    assert model.shape_for("RerankQueriesList").metadata["max"] == 1
    assert model.shape_for("RerankTextDocumentTextString").metadata == {"min": 1, "max": MAX_TEXT_CHARS}
    assert model.shape_for("BedrockRerankingConfigurationNumberOfResultsInteger").metadata["max"] == 1000
    assert model.shape_for("BedrockModelArn").metadata["pattern"] == MODEL_ARN_PATTERN
