from __future__ import annotations

import json

import pytest
from shardrag.errors import BadRequest
from shardrag.request import MAX_BODY_BYTES, MAX_QUESTION_CHARS, parse_query_body, parse_query_request


def test_valid_request_gets_defaults() -> None:
    request = parse_query_body(json.dumps({"question": "What causes tides?"}))
    assert request.question == "What causes tides?"
    assert request.top_k is None and request.generate is True and request.filters is None
    assert request.resolved_top_k(8) == 8


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b'"question"', "JSON object"),
        (json.dumps({}).encode(), "question"),
        (json.dumps({"question": ""}).encode(), "question"),
        (json.dumps({"question": "   \n\t"}).encode(), "blank"),
        (json.dumps({"question": "x" * (MAX_QUESTION_CHARS + 1)}).encode(), "question"),
        (json.dumps({"question": "ok", "top_k": -3}).encode(), "top_k"),
        (json.dumps({"question": "ok", "top_k": 0}).encode(), "top_k"),
        (json.dumps({"question": "ok", "top_k": 51}).encode(), "top_k"),
        (json.dumps({"question": "ok", "top_k": "many"}).encode(), "top_k"),
        (json.dumps({"question": "ok", "top_k": 2.5}).encode(), "top_k"),
        (json.dumps({"question": 42}).encode(), "question"),
        (json.dumps({"question": "ok", "top_k": True}).encode(), "top_k"),
        (json.dumps({"question": "ok", "top_k": "5"}).encode(), "top_k"),
        (json.dumps({"question": "ok", "generate": "perhaps"}).encode(), "generate"),
        (json.dumps({"question": "ok", "unexpected": 1}).encode(), "unexpected"),
        (json.dumps({"question": "ok", "filters": ["a"]}).encode(), "filters"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_malformed_requests_are_bad_requests_with_a_reason(body: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_query_body(body)
    assert fragment.lower() in caught.value.message.lower()


def test_oversized_body_is_refused_before_parsing() -> None:
    with pytest.raises(BadRequest, match="exceeds"):
        parse_query_body(b"{" + b" " * MAX_BODY_BYTES + b"}")


def test_top_k_bounds_are_inclusive() -> None:
    assert parse_query_request({"question": "q", "top_k": 1}).top_k == 1
    assert parse_query_request({"question": "q", "top_k": 50}).top_k == 50


def test_deep_rankings_are_served_as_ids_only() -> None:
    ids_only = parse_query_request({"question": "q", "top_k": 200, "generate": False, "include_text": False})
    assert ids_only.top_k == 200 and ids_only.include_text is False
    for body in (
        {"question": "q", "top_k": 51},
        {"question": "q", "top_k": 51, "generate": False},
        {"question": "q", "top_k": 51, "include_text": False},
        {"question": "q", "top_k": 201, "generate": False, "include_text": False},
    ):
        with pytest.raises(BadRequest, match="top_k"):
            parse_query_request(body)
