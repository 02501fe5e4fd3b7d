"""Lambda packaging: layer wiring, and each function's unzipped size against Lambda's 250 MB limit."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
from cdk_synthesis import ROOT
from shardrag_cdk.layout import (
    FORBIDDEN_DISTRIBUTIONS,
    FUNCTION_LAYERS,
    FUNCTION_NAMES,
    HEADROOM_BYTES,
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    MAX_LAYERS,
    PIP_LAYERS,
    layer_dir,
    layer_is_built,
)


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_lambda_assets", ROOT / "scripts" / "build_lambda_assets.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_function_has_a_layer_plan_within_lambdas_layer_limit() -> None:
    assert set(FUNCTION_LAYERS) == set(FUNCTION_NAMES)
    for name, layers in FUNCTION_LAYERS.items():
        assert len(layers) <= MAX_LAYERS, name
        assert layers[0] == "core", name


def test_every_pip_layer_has_requirements_pinned_by_the_constraints() -> None:
    constraints = (ROOT / "cdk" / "lambda_layers" / "constraints.txt").read_text()
    pinned = {line.split("==")[0].lower() for line in constraints.splitlines() if "==" in line}
    for layer in PIP_LAYERS:
        for path in (layer.requirements, layer.requirements_nodeps):
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                name = line.split("#")[0].strip().lower()
                if name:
                    assert name in pinned, f"{path.name}: {name} has no pin in constraints.txt"
                    assert name not in FORBIDDEN_DISTRIBUTIONS


_BUILT = all(layer_is_built(layer) for layers in FUNCTION_LAYERS.values() for layer in layers)


@pytest.mark.skipif(not _BUILT, reason="layers not built: run scripts/build_lambda_assets.py (and make model)")
def test_each_function_fits_lambdas_unzipped_limit(capsys: pytest.CaptureFixture[str]) -> None:
    script = _build_script()
    sizes = script.package_sizes()
    with capsys.disabled():
        print("\n" + "\n".join(script.report(sizes)))
    # Every function keeps 20 MiB free under the limit (a dependency upgrade must not break a deployment).
    over = {name: total for name, (total, _) in sizes.items() if total > LAMBDA_UNZIPPED_LIMIT_BYTES - HEADROOM_BYTES}
    assert over == {}


@pytest.mark.skipif(not _BUILT, reason="layers not built")
def test_functions_ship_the_boto3_the_tests_ran_with() -> None:
    import boto3
    import botocore

    site = layer_dir("base") / "python"
    script = _build_script()
    shipped = {name: info.name for name, info in script._distributions(site).items()}
    assert shipped["boto3"] == f"boto3-{boto3.__version__}.dist-info"
    assert shipped["botocore"] == f"botocore-{botocore.__version__}.dist-info"
    # Only the service models the functions call are kept (the table the VPC endpoints come from too).
    from shardrag_cdk.layout import BOTOCORE_SERVICES

    kept = {p.name for p in (site / "botocore" / "data").iterdir() if p.is_dir()}
    assert kept == set(BOTOCORE_SERVICES)


def test_functions_too_big_for_the_model_layer_fetch_it_from_s3() -> None:
    from shardrag_cdk.layout import MODEL_FROM_S3

    for function in MODEL_FROM_S3:
        assert "model" not in FUNCTION_LAYERS[function]
        assert "onnx" in FUNCTION_LAYERS[function]  # it still embeds


@pytest.mark.skipif(not _BUILT, reason="layers not built")
def test_built_layers_hold_no_forbidden_distribution() -> None:
    script = _build_script()
    for layer in PIP_LAYERS:
        found = set(script._distributions(layer_dir(layer.name) / "python")) & FORBIDDEN_DISTRIBUTIONS
        assert found == set(), layer.name


@pytest.mark.skipif(not _BUILT, reason="layers not built")
def test_no_distribution_ships_twice_to_a_function() -> None:
    """Layers overlay one another in /opt/python: a repeated distribution only costs size (or mixes versions)."""
    script = _build_script()
    for function, layers in FUNCTION_LAYERS.items():
        seen: dict[str, str] = {}
        for layer in layers:
            if layer in ("core", "model"):
                continue
            for dist in script._distributions(layer_dir(layer) / "python"):
                assert dist not in seen or dist == "protobuf", f"{function}: {dist} in {seen.get(dist)} and {layer}"
                seen[dist] = layer
