"""Synthesised ShardRAG stacks, shared by every infrastructure test: a synthesis costs seconds, do each once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cdk_synthesis import ENVIRONMENTS, Synthesis, synthesise


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.infrastructure)


@pytest.fixture(scope="session")
def synthesised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Synthesis]]:
    """Every environment of cdk.json, synthesised once per test session."""
    yield {name: synthesise(name, tmp_path_factory.mktemp(f"cdk-{name}")) for name in ENVIRONMENTS}


@pytest.fixture(params=ENVIRONMENTS)
def synth(request: pytest.FixtureRequest, synthesised: dict[str, Synthesis]) -> Synthesis:
    """Each environment in turn."""
    return synthesised[request.param]
