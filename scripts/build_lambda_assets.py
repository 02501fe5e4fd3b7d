#!/usr/bin/env python3
"""Build the Lambda dependency layers under ``build/lambda/`` without Docker, and report package sizes.

Each layer is ``pip install -t build/lambda/<layer>/python`` of manylinux wheels for CPython 3.12 (the Lambda
runtime), whatever the host Python is. ``--only-binary=:all:`` makes a missing wheel an error instead of a
source build for the wrong platform. The ONNX model (``make model`` → ``build/model``) is staged as the
``model`` layer, mounted at ``/opt/model``.

    python scripts/build_lambda_assets.py            # build every layer, then print sizes
    python scripts/build_lambda_assets.py --sizes    # only print sizes (and fail if a function is too big)
    python scripts/build_lambda_assets.py --sizes --smoke python3.12   # + import each function's modules
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cdk"))

from shardrag_cdk.layout import (
    BUILD_DIR,
    FORBIDDEN_DISTRIBUTIONS,
    FUNCTION_AWS_SERVICES,
    FUNCTION_LAYERS,
    HEADROOM_BYTES,
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    MODEL_FILES,
    MODEL_SOURCE_DIR,
    PIP_LAYERS,
    REQUIREMENTS_DIR,
    FunctionName,
    PipLayer,
    function_dir,
    layer_dir,
    layer_is_built,
)

#: Lambda python3.12 runs on Amazon Linux 2023 (glibc 2.34): manylinux_2_28 wheels run there too, and some
#: current wheels (numpy ≥ 2.3) are no longer published for manylinux2014.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
PYTHON_VERSION = "3.12"
#: Never shipped: bytecode caches are rebuilt in /tmp, tests and type stubs are dead weight.
PRUNE_DIR_NAMES = {"__pycache__", "tests", "test"}
PRUNE_SUFFIXES = (".pyc", ".pyi")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pip_install(target: Path, requirements: Path, *, no_deps: bool) -> None:
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
        "--target", str(target), "--implementation", "cp", "--python-version", PYTHON_VERSION,
        "--only-binary=:all:", "--upgrade",
        "-r", str(requirements), "-c", str(REQUIREMENTS_DIR / "constraints.txt"),
    ]  # fmt: skip
    for platform in PLATFORMS:
        command += ["--platform", platform]
    if no_deps:
        command.append("--no-deps")
    subprocess.run(command, check=True)


def _distributions(site: Path) -> dict[str, Path]:
    """Normalised distribution name -> its ``.dist-info`` folder."""
    found = {}
    for info in site.glob("*.dist-info"):
        name = info.name[: -len(".dist-info")].rsplit("-", 1)[0]
        found[_normalise(name)] = info
    return found


def _remove_distribution(site: Path, info: Path) -> None:
    """Delete a distribution's files as listed in its RECORD (what ``pip uninstall`` would delete)."""
    record = info / "RECORD"
    if record.exists():
        for line in record.read_text().splitlines():
            relative = line.split(",", 1)[0]
            path = (site / relative).resolve()
            if path.is_file() and site.resolve() in path.parents:
                path.unlink()
    shutil.rmtree(info, ignore_errors=True)
    # Package folders emptied by the RECORD removal.
    for folder in sorted((p for p in site.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()


def _prune(site: Path) -> None:
    for path in sorted(site.rglob("*"), key=lambda p: -len(p.parts)):
        if path.is_dir() and path.name in PRUNE_DIR_NAMES:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name.endswith(PRUNE_SUFFIXES):
            path.unlink()


def build_pip_layer(layer: PipLayer) -> None:
    root = layer_dir(layer.name)
    site = root / "python"
    shutil.rmtree(root, ignore_errors=True)
    site.mkdir(parents=True)
    marker = root / ".incomplete"
    marker.write_text("build in progress\n")
    if layer.requirements.exists():
        _pip_install(site, layer.requirements, no_deps=False)
    if layer.requirements_nodeps.exists():
        _pip_install(site, layer.requirements_nodeps, no_deps=True)
    for other in layer.provided_by:
        provided = _distributions(layer_dir(other) / "python")
        for name, info in _distributions(site).items():
            if name in provided:
                _remove_distribution(site, info)
    forbidden = sorted(set(_distributions(site)) & FORBIDDEN_DISTRIBUTIONS)
    if forbidden:
        raise SystemExit(f"layer {layer.name!r} pulled forbidden distributions: {forbidden}")
    for pattern in layer.drop:
        for path in site.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    for folder, keep in layer.keep_only:
        for path in (site / folder).iterdir():
            if path.is_dir() and path.name not in keep:
                shutil.rmtree(path)
    _prune(site)
    marker.unlink()


def stage_model_layer() -> bool:
    """Hard-link (or copy) the exported model into ``build/lambda/model/model``; False when not exported."""
    missing = [f for f in MODEL_FILES if not (MODEL_SOURCE_DIR / f).is_file()]
    if missing:
        print(f"model layer skipped: {MODEL_SOURCE_DIR} lacks {missing} (run `make model`)", file=sys.stderr)
        return False
    target = layer_dir("model") / "model"
    shutil.rmtree(layer_dir("model"), ignore_errors=True)
    target.mkdir(parents=True)
    for name in MODEL_FILES:
        try:
            os.link(MODEL_SOURCE_DIR / name, target / name)
        except OSError:
            shutil.copy2(MODEL_SOURCE_DIR / name, target / name)
    return True


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path`` (what Lambda counts once unzipped)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def package_sizes() -> dict[FunctionName, tuple[int, dict[str, int]]]:
    """Per function: total unzipped bytes and the bytes of each part (code and each layer).

    Raises ``FileNotFoundError`` when a layer the function needs has not been built.
    """
    result: dict[FunctionName, tuple[int, dict[str, int]]] = {}
    layer_sizes: dict[str, int] = {}
    for function, layers in FUNCTION_LAYERS.items():
        parts = {"code": tree_size(function_dir(function))}
        for layer in layers:
            if not layer_is_built(layer):
                raise FileNotFoundError(f"layer {layer!r} is not built ({layer_dir(layer)})")
            if layer not in layer_sizes:
                layer_sizes[layer] = tree_size(layer_dir(layer))
            parts[layer] = layer_sizes[layer]
        result[function] = (sum(parts.values()), parts)
    return result


#: Run inside the smoke test's interpreter: every client the function creates, and the API members the code needs
#: (conditional PutObject for the term statistics, Rerank for the reranker, Converse for generation).
_CLIENT_CHECK = """
import boto3
NEEDS = {"s3": ("PutObject", ("IfMatch", "IfNoneMatch")), "bedrock-agent-runtime": ("Rerank", ()),
         "bedrock-runtime": ("Converse", ())}
def check(services):
    for service in services:
        client = boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        operation, members = NEEDS.get(service, (None, ()))
        if operation:
            shape = client.meta.service_model.operation_model(operation).input_shape
            missing = [m for m in members if m not in shape.members]
            assert not missing, f"{service} {operation} lacks {missing} in botocore {boto3.__version__}"
"""


def smoke_test(python: str) -> list[str]:
    """Import, with ``python`` (a CPython 3.12 on Linux), the modules each function's layers promise.

    Only the layers a function really gets are on the path, so a module that needs a distribution from a
    layer the function lacks fails here rather than at the first cold start.
    """
    failures: list[str] = []
    layers_by_name = {layer.name: layer for layer in PIP_LAYERS}
    for function, layers in FUNCTION_LAYERS.items():
        paths = [str(layer_dir(name) / "python") for name in layers if name != "model"]
        modules = ["shardrag.config", "shardrag.request"]
        for name in layers:
            if name in layers_by_name:
                modules += layers_by_name[name].imports
        # -S: no site-packages of the host interpreter, only what the function will really have. Then the AWS
        # clients the function creates, from the botocore it ships, with the operations the code relies on.
        code = (
            f"import importlib, sys\nsys.path[:0] = {paths!r}\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
            f"{_CLIENT_CHECK}\ncheck({list(FUNCTION_AWS_SERVICES[function])!r})"
        )
        result = subprocess.run([python, "-S", "-c", code, *modules], capture_output=True, text=True, check=False)
        status = "ok" if result.returncode == 0 else "FAILED: " + result.stderr.strip().splitlines()[-1]
        print(f"import check {function:14s} {status}")
        if result.returncode != 0:
            failures.append(function)
    return failures


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:7.1f} MiB"


def fits(total: int) -> bool:
    """Within Lambda's limit with the headroom every function keeps."""
    return total <= LAMBDA_UNZIPPED_LIMIT_BYTES - HEADROOM_BYTES


def report(sizes: dict[FunctionName, tuple[int, dict[str, int]]]) -> Iterable[str]:
    limit = LAMBDA_UNZIPPED_LIMIT_BYTES
    for function, (total, parts) in sizes.items():
        detail = ", ".join(f"{k} {v / 1024 / 1024:.1f}" for k, v in parts.items())
        if fits(total):
            verdict = f"ok, {(limit - total) / 1024 / 1024:.1f} MiB free"
        elif total <= limit:
            verdict = f"UNDER {HEADROOM_BYTES // 1024 // 1024} MiB OF HEADROOM"
        else:
            verdict = "OVER THE LIMIT"
        yield f"{function:14s} {_mib(total)} of {_mib(limit).strip()}  {verdict}   ({detail} MiB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", action="store_true", help="only report sizes of the already built layers")
    parser.add_argument("--layer", action="append", help="build only this pip layer (repeatable)")
    parser.add_argument("--smoke", metavar="PYTHON3.12", help="import each function's modules with this Python")
    args = parser.parse_args(argv)
    if not args.sizes:
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        for layer in PIP_LAYERS:
            if args.layer and layer.name not in args.layer:
                continue
            print(f"building layer {layer.name} …", file=sys.stderr)
            build_pip_layer(layer)
        stage_model_layer()
    try:
        sizes = package_sizes()
    except FileNotFoundError as exc:
        print(f"sizes not reported: {exc}", file=sys.stderr)
        return 0 if not args.sizes else 1
    for line in report(sizes):
        print(line)
    if args.smoke and smoke_test(args.smoke):
        return 1
    return 0 if all(fits(total) for total, _ in sizes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
