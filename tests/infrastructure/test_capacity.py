"""The API stage sheds before any query function throttles: the synthesised throttle and reserved concurrency
obey ``parallel x (burst + rate x p99) <= reserved`` (``shardrag_cdk.capacity``), and a configuration that would
not is refused before synthesis."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cdk_synthesis import CDK_CONTEXT, Synthesis
from shardrag_cdk.capacity import DEFAULT_P99_MS, QUERY_FUNCTIONS, concurrency_needed
from shardrag_cdk.config import DeploymentConfigError, load_environment


def _reserved_by_function(synth: Synthesis) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for props in synth.properties("AWS::Lambda::Function"):
        name = str(props.get("Description", "")).removeprefix("ShardRAG ")
        if name in QUERY_FUNCTIONS:
            found[name] = props.get("ReservedConcurrentExecutions")
    return found


def _shard_branches(synth: Synthesis) -> int:
    (machine,) = synth.properties("AWS::StepFunctions::StateMachine")
    definition = json.loads(machine["DefinitionString"])
    (parallel,) = [s for s in definition["States"].values() if s["Type"] == "Parallel"]
    return len(parallel["Branches"])


def test_synthesised_throttle_fits_every_query_functions_reserved_concurrency(synth: Synthesis) -> None:
    (stage,) = synth.properties("AWS::ApiGateway::Stage")
    (settings,) = stage["MethodSettings"]
    rate, burst = settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]
    reserved = _reserved_by_function(synth)
    assert set(reserved) == set(QUERY_FUNCTIONS)
    shards = _shard_branches(synth)  # what runs at once is what the synthesised workflow fans out to
    for function, limit in reserved.items():
        if limit is None:
            continue  # the account's unreserved pool: no per-function throttle to stay under
        p99_ms = synth.config.deployment.functions.of(function).p99_ms or DEFAULT_P99_MS[function]
        parallel = shards if function == "shard_search" else 1
        needed = concurrency_needed(rate=rate, burst=burst, p99_s=p99_ms / 1000, parallel=parallel)
        assert needed <= limit, f"{synth.name} {function}: needs {needed}, reserved {limit}"


def test_a_throttle_the_functions_cannot_hold_is_refused() -> None:
    environments = copy.deepcopy(CDK_CONTEXT["environments"])
    functions = environments["prod"]["deployment"]["functions"]
    reserved = functions["fuse_generate"]["reserved_concurrency"]
    # A stage that admits one more generation at once than FuseAndGenerate may run.
    environments["prod"]["deployment"]["api"].update(throttle_rate_limit=1, throttle_burst_limit=reserved)
    functions["fuse_generate"]["p99_ms"] = 1000

    with pytest.raises(DeploymentConfigError, match=r"fuse_generate: 1 x \(\d+ \+ 1/s x 1000 ms\)"):
        load_environment(environments, "prod")


def test_the_shard_count_multiplies_shard_search_demand() -> None:
    environments: dict[str, Any] = copy.deepcopy(CDK_CONTEXT["environments"])
    prod = environments["prod"]
    rate, burst = prod["deployment"]["api"]["throttle_rate_limit"], prod["deployment"]["api"]["throttle_burst_limit"]
    shards = prod["settings"]["store"]["shard_count"]
    needed = concurrency_needed(rate=rate, burst=burst, p99_s=DEFAULT_P99_MS["shard_search"] / 1000, parallel=shards)
    prod["deployment"]["functions"]["shard_search"]["reserved_concurrency"] = needed - 1
    prod["deployment"]["functions"]["shard_search"].pop("provisioned_concurrency", None)

    with pytest.raises(DeploymentConfigError, match="shard_search"):
        load_environment(environments, "prod")


def test_a_shed_execution_answers_429_with_retry_after_like_the_stage() -> None:
    from shardrag.errors import ERROR_STATUS, RETRY_AFTER_S
    from shardrag_cdk.api_mapping import response_template

    template = response_template()
    overloaded = [name for name, (status, _) in ERROR_STATUS.items() if status == 429]
    assert {"Overloaded", "ShardBusy", "Lambda.TooManyRequestsException"} <= set(overloaded)
    for name in overloaded:
        branch = template.split(f'($error == "{name}")', 1)[1].split("#elseif", 1)[0]
        assert "responseOverride.status = 429" in branch
        assert f'responseOverride.header.Retry-After = "{RETRY_AFTER_S}"' in branch


def test_feedback_is_sized_against_the_throttle_like_the_other_query_functions() -> None:
    """The workflow answers a throttled Feedback from the first pass: no error shows, the second round is just lost,
    so its reserved concurrency must hold what the stage admits too."""
    environments: dict[str, Any] = copy.deepcopy(CDK_CONTEXT["environments"])
    prod = environments["prod"]
    rate, burst = prod["deployment"]["api"]["throttle_rate_limit"], prod["deployment"]["api"]["throttle_burst_limit"]
    # One invocation per query: it searches the shards again from threads, not through ShardSearch.
    needed = concurrency_needed(rate=rate, burst=burst, p99_s=DEFAULT_P99_MS["feedback"] / 1000, parallel=1)
    assert DEFAULT_P99_MS["feedback"] > DEFAULT_P99_MS["shard_search"]  # a read, then a search
    prod["deployment"]["functions"]["feedback"]["reserved_concurrency"] = needed - 1

    with pytest.raises(DeploymentConfigError, match=rf"feedback: 1 x \({burst} \+ {rate:g}/s x 1000 ms\) = {needed}"):
        load_environment(environments, "prod")
