from __future__ import annotations

import pytest
from shardrag.errors import BadRequest
from shardrag.filters import FilterCompiler

compiler = FilterCompiler({"year": "number", "lang": "string", "reviewed": "bool", "published": "date"})


def test_builtins_and_declared_fields_compile() -> None:
    expr = compiler.run(
        {
            "doc_id": "d1",
            "source_prefix": "s3://b/a_b%/",
            "year": {"gte": 2005, "lt": 2010},
            "lang": ["en", "de"],
        }
    )
    assert 'external_id == "d1"' in expr
    # A prefix is a range (LIKE's wildcards and escapes never come into it).
    assert '(source >= "s3://b/a_b%/" and source < "s3://b/a_b%/\U0010ffff")' in expr
    assert 'metadata["year"] >= 2005' in expr and 'metadata["year"] < 2010' in expr
    assert '(metadata["lang"] == "en" or metadata["lang"] == "de")' in expr


def test_empty_filters_compile_to_nothing() -> None:
    assert compiler.run(None) == "" and compiler.run({}) == ""


@pytest.mark.parametrize(
    "hostile",
    [
        'x" or doc_id != "',
        '" || true || "',
        "\\",
        '\\" or 1==1 or \\"',
        "a'; drop collection --",
        'ü"\n) or (1==1',
    ],
)
def test_hostile_strings_stay_one_literal(hostile: str) -> None:
    expr = compiler.run({"doc_id": hostile})
    assert expr.startswith('external_id == "') and expr.endswith('"')
    body = expr[len('external_id == "') : -1]
    # Every quote inside the literal is escaped, so the literal cannot end early.
    i = 0
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        assert body[i] != '"', f"unescaped quote in {expr!r}"
        i += 1


@pytest.mark.parametrize(
    "filters",
    [
        {"undeclared": "x"},
        {'year"] or 1==1 or metadata["a': 1},
        {"year": {"between": [1, 2]}},
        {"year": {"gte": True}},
        {"lang": []},
        {"lang": [{"nested": 1}]},
        {"source_prefix": ""},
        {"year": float("nan")},
        {"year": "2005"},
        {"year": {"gte": "2005"}},
        {"lang": 3},
        {"lang": ["en", 3]},
        {"reviewed": "yes"},
        {"published": {"gte": "last week"}},
        {"doc_id": 7},
    ],
)
def test_bad_filters_are_bad_requests(filters: dict) -> None:
    with pytest.raises(BadRequest):
        compiler.run(filters)


def test_dates_and_booleans_compile_as_typed_literals() -> None:
    expr = compiler.run({"published": {"gte": "2020-01-01", "lt": "2021-06-30T12:00:00Z"}, "reviewed": True})
    assert 'metadata["published"] >= "2020-01-01"' in expr
    assert 'metadata["published"] < "2021-06-30T12:00:00Z"' in expr
    assert 'metadata["reviewed"] == true' in expr
