from __future__ import annotations

import json
from pathlib import Path

import pytest
from shardrag.statemachine import (
    QUERY_FUNCTIONS,
    DefinitionError,
    placeholders,
    render_definition,
    substitute,
)

ASL = Path(__file__).resolve().parents[2] / "statemachines" / "query.asl.json"


def _branches(definition: str) -> list[dict]:
    return json.loads(definition)["States"]["SearchShards"]["Branches"]


@pytest.mark.parametrize("shards", [1, 4, 8, 16])
def test_one_branch_per_shard_from_the_single_template(shards: int) -> None:
    branches = _branches(render_definition(ASL.read_text(), shards))
    assert len(branches) == shards
    for i, branch in enumerate(branches):
        states = branch["States"]
        assert branch["StartAt"] == f"Shard{i}Selected"
        search = states[f"SearchShard{i}"]
        assert search["Parameters"]["Payload"]["shard"] == i  # an integer, not the string "${ShardIndex}"
        assert search["ResultSelector"]["shard"] == i
        assert states[f"Shard{i}Selected"]["Choices"][0]["Variable"] == f"$.route.selected.shard_{i}"
        # every branch catches its own failure, except a bad request, which fails the query rather than the shard;
        # overload is caught next (shed rather than degraded), and anything else last
        assert search["Catch"][0]["ErrorEquals"] == ["BadRequest", "WiringError"]
        assert states[search["Catch"][0]["Next"]]["Type"] == "Fail"
        assert search["Catch"][1]["ErrorEquals"] == ["Lambda.TooManyRequestsException", "ShardBusy"]
        assert search["Catch"][-1]["ErrorEquals"] == ["States.ALL"]
        assert states[search["Catch"][-1]["Next"]] is states[f"ShardFailed{i}"]
        assert states[f"ShardFailed{i}"]["Parameters"]["shard"] == i


def test_the_file_keeps_exactly_one_template_branch() -> None:
    raw = json.loads(ASL.read_text())
    assert len(raw["States"]["SearchShards"]["Branches"]) == 1


def test_rendered_definition_leaves_only_the_function_placeholders() -> None:
    rendered = render_definition(ASL.read_text(), 4)
    assert placeholders(rendered) == set(QUERY_FUNCTIONS)


def test_substitution_replaces_every_placeholder() -> None:
    values = {name: f"arn:aws:lambda:us-east-1:123456789012:function:{fn}" for name, fn in QUERY_FUNCTIONS.items()}
    final = substitute(render_definition(ASL.read_text(), 3), values)
    assert "${" not in final
    assert json.loads(final)["States"]["Embed"]["Parameters"]["FunctionName"].endswith(":embed")


def test_missing_or_unused_substitutions_fail() -> None:
    rendered = render_definition(ASL.read_text(), 2)
    values = {name: "arn" for name in QUERY_FUNCTIONS}
    with pytest.raises(DefinitionError, match="missing"):
        substitute(rendered, {k: v for k, v in values.items() if k != "RouteFunctionArn"})
    with pytest.raises(DefinitionError, match="unused"):
        substitute(rendered, {**values, "Typo": "x"})


def test_bad_templates_are_rejected() -> None:
    with pytest.raises(DefinitionError):
        render_definition("{not json", 2)
    with pytest.raises(DefinitionError, match="template"):
        render_definition(json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}), 2)
    with pytest.raises(DefinitionError):
        render_definition(ASL.read_text(), 0)
