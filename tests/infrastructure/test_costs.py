"""The cost table: computed from one prices file whose every figure names its source and date; the README shows
exactly what the computation gives."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cdk_synthesis import CDK_CONTEXT, ROOT
from shardrag_cdk.config import load_environment
from shardrag_cdk.costs import KINDS, PRICES_FILE, Prices, estimate, invocations_per_query, table


def _entries(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict) and "value" in node:
        return [(path, node)]
    if isinstance(node, dict):
        return [e for key, value in node.items() for e in _entries(value, f"{path}.{key}".strip("."))]
    return []


def test_every_price_names_its_source_and_date() -> None:
    raw = json.loads(PRICES_FILE.read_text())
    entries = [*_entries(raw["prices"]), ("hours_per_month", raw["hours_per_month"])]
    assert len(entries) >= 15
    for name, entry in entries:
        assert isinstance(entry["value"], int | float) and entry["value"] > 0, name
        assert entry["unit"] and entry["source"], name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["date"]), name


def test_readme_shows_the_computed_table() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("<!-- cost-table:start -->\n", 1)[1].split("\n<!-- cost-table:end -->", 1)[0]
    assert shown == table(CDK_CONTEXT["environments"]), "run `python -m shardrag_cdk.costs` and update README.md"


@pytest.mark.parametrize("kind", KINDS)
def test_every_environment_and_store_kind_has_an_estimate(kind: str) -> None:
    prices = Prices()
    for name in CDK_CONTEXT["environments"]:
        result = estimate(load_environment(CDK_CONTEXT["environments"], name), kind, prices)
        assert result.per_million_queries > 0
        assert (result.idle_per_month > 0) is (kind != "external")


def test_idle_cost_follows_the_configuration() -> None:
    prices = Prices()
    dev = load_environment(CDK_CONTEXT["environments"], "dev")
    result = estimate(dev, "standalone", prices)
    # dev: one t4g.large around the clock, and Secrets Manager and SQS interface endpoints in each of two zones.
    assert result.idle_items["Milvus host"] == pytest.approx(prices.price("ec2_hour.t4g.large") * 730)
    assert result.idle_items["interface endpoints"] == pytest.approx(2 * 2 * 0.01 * 730)
    assert "NAT gateways" not in result.idle_items
    with pytest.raises(KeyError, match="add it with its source and date"):
        prices.price("ec2_hour.x9g.huge")


def test_the_answer_cache_adds_its_dynamodb_requests_to_the_per_query_cost() -> None:
    prices = Prices()
    environments = json.loads(json.dumps(CDK_CONTEXT["environments"]))
    on = load_environment(environments, "dev")
    assert on.settings.cache.answers
    environments["dev"]["settings"]["cache"]["answers"] = False
    off = load_environment(environments, "dev")
    added = (
        estimate(on, "standalone", prices).per_million_queries - estimate(off, "standalone", prices).per_million_queries
    )
    # A 3 KB answer: 1 strongly consistent read (version) + 0.5 eventually consistent (lookup), 3 write units (put).
    expected = 1.5 * prices.price("dynamodb_read_request_million") + 3 * prices.price("dynamodb_write_request_million")
    assert added == pytest.approx(expected)


def test_feedback_adds_one_invocation_and_its_gb_seconds_per_query_and_nothing_per_transition() -> None:
    """Hybrid with dense feedback (both environments' default) runs the Feedback state once per query: one more
    Lambda request and its GB-seconds. Its Choice and Task are two more state transitions, which an EXPRESS
    workflow does not bill (per execution and duration only): nothing else may change."""
    prices = Prices()
    environments = json.loads(json.dumps(CDK_CONTEXT["environments"]))
    for name in environments:
        on = load_environment(environments, name)
        assert invocations_per_query(on)["feedback"] == 1
        retrieval = environments[name]["settings"].setdefault("retrieval", {})
        retrieval["feedback"] = {"enabled": False}
        off = load_environment(environments, name)
        retrieval.pop("feedback")
        retrieval["mode"] = "dense"  # feedback on, but the default mode never runs the Feedback state
        dense = load_environment(environments, name)
        assert invocations_per_query(off)["feedback"] == invocations_per_query(dense)["feedback"] == 0
        memory_gb = on.deployment.functions.feedback.memory_mb / 1024
        expected = prices.price("lambda_request_million") + (
            memory_gb * prices.assumptions["duration_s"]["feedback"] * 1_000_000 * prices.price("lambda_gb_second_x86")
        )
        for without in (off, dense):
            added = (
                estimate(on, "standalone", prices).per_million_queries
                - estimate(without, "standalone", prices).per_million_queries
            )
            assert added == pytest.approx(expected), name
