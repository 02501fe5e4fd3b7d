"""Lambda code and layers from directories: no Docker, no bundling step inside ``cdk synth``.

Dependency layers are pre-built by ``scripts/build_lambda_assets.py`` into ``build/lambda/<layer>``. How a
missing one is handled is explicit (context ``shardrag:assets``):

* ``auto`` (default): use the built directory; if it is missing, a marked stand-in and a synthesis warning,
  so that ``cdk synth`` and template checks work on a fresh clone. Such a template cannot be deployed: it carries a
  CloudFormation rule that fails the change set, before any resource is created, with a message saying to build
  the layers (``make deploy`` builds them and passes ``require``).
* ``require``: a missing layer is a synthesis error (``make deploy`` passes it).
* ``stub``: always the stand-ins. The template tests use it: they check the template, not package contents
  (the package-size check does that), and staging ~250 MB per synthesis would make them slow.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path
from typing import Final, Literal, get_args

from aws_cdk import Annotations, CfnParameter, CfnRule, CfnRuleAssertion, Fn
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3_assets as s3_assets
from constructs import Construct

from shardrag_cdk.config import DeploymentConfigError
from shardrag_cdk.layout import FUNCTION_LAYERS, FunctionName, LayerName, function_dir, layer_dir, layer_is_built

AssetMode = Literal["auto", "require", "stub"]
ASSET_MODE_CONTEXT: Final = "shardrag:assets"
RUNTIME: Final = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE: Final = lambda_.Architecture.X86_64
#: Never shipped with function code or the core layer.
_EXCLUDE: Final = ["**/__pycache__", "**/*.pyc", "**/.mypy_cache", "**/tests"]
_LAYER_NAMES: Final[tuple[LayerName, ...]] = get_args(LayerName)


def asset_mode(value: object) -> AssetMode:
    """Validate the ``shardrag:assets`` context value (absent means ``auto``)."""
    if value is None:
        return "auto"
    if value not in get_args(AssetMode):
        raise DeploymentConfigError(f"context {ASSET_MODE_CONTEXT} must be one of {get_args(AssetMode)}")
    return value  # type: ignore[return-value]


@cache
def _stand_in(layer: str) -> Path:
    """A per-process directory shaped like the layer, holding only a note saying it is not the real thing."""
    root = Path(tempfile.mkdtemp(prefix=f"shardrag-{layer}-standin-"))
    content = root / ("model" if layer == "model" else "python")
    content.mkdir()
    (content / "NOT_BUILT.txt").write_text(
        f"Stand-in for the '{layer}' layer: run `python scripts/build_lambda_assets.py` before deploying.\n"
    )
    return root


class LambdaPackaging(Construct):
    """The layers every function draws from, and each function's code asset."""

    def __init__(self, scope: Construct, construct_id: str, *, mode: AssetMode) -> None:
        super().__init__(scope, construct_id)
        self.mode = mode
        self.stand_ins: list[str] = []
        self._refusing = False
        self._model_archive: s3_assets.Asset | None = None
        self._layers: dict[LayerName, lambda_.ILayerVersion] = {}
        needed = {layer for layers in FUNCTION_LAYERS.values() for layer in layers}
        for name in (n for n in _LAYER_NAMES if n in needed):
            self._layers[name] = lambda_.LayerVersion(
                self,
                f"{name.capitalize()}Layer",
                code=lambda_.Code.from_asset(str(self._layer_source(name)), exclude=_EXCLUDE),
                compatible_runtimes=[RUNTIME],
                compatible_architectures=[ARCHITECTURE],
                description=f"ShardRAG {name} layer",
            )
        if self.stand_ins:
            self._refuse_deployment()
            Annotations.of(self).add_warning_v2(
                "shardrag:layers-not-built",
                f"layers {self.stand_ins} are stand-ins (not built): this template is NOT deployable. "
                "Run `python scripts/build_lambda_assets.py` (and `make model`) first.",
            )

    def _refuse_deployment(self) -> None:
        """A rule CloudFormation evaluates when it creates the change set: with stand-ins it always fails, so a
        plain ``cdk deploy`` of this template stops with this message instead of shipping functions that cannot
        import their dependencies. (A parameter, as in CDK's own bootstrap-version rule: rules compare parameters.)
        """
        if self._refusing:
            return
        self._refusing = True
        marker = CfnParameter(
            self,
            "LayersBuilt",
            type="String",
            default="no",
            allowed_values=["no", "yes"],
            description="Whether the Lambda layers were built (this template has stand-ins: they were not)",
        )
        CfnRule(
            self,
            "RefuseStandInLayers",
            assertions=[
                CfnRuleAssertion(
                    assert_=Fn.condition_equals(marker.value_as_string, "yes"),
                    assert_description=(
                        "Not deployable: this template was synthesised without built Lambda layers (stand-ins). Build "
                        "them with `make lambda-assets` (no Docker needed), or deploy with `make deploy ENV=<env>`."
                    ),
                )
            ],
        )

    def _layer_source(self, name: LayerName) -> Path:
        if name == "core":
            return layer_dir(name)  # source in the repository: always real
        if self.mode == "stub":
            self.stand_ins.append(name)
            return Path(_stand_in(name))
        if layer_is_built(name):
            return layer_dir(name)
        if self.mode == "require":
            raise DeploymentConfigError(
                f"layer {name!r} is not built ({layer_dir(name)} is missing or incomplete): run "
                "`python scripts/build_lambda_assets.py` (the model layer also needs `make model`)"
            )
        self.stand_ins.append(name)
        return Path(_stand_in(name))

    def model_archive(self) -> s3_assets.Asset:
        """The exported model as a zip in the assets bucket, for the functions in ``MODEL_FROM_S3``."""
        if self._model_archive is None:
            self._model_archive = s3_assets.Asset(
                self, "ModelArchive", path=str(self._layer_source("model") / "model"), exclude=_EXCLUDE
            )
        return self._model_archive

    def layers_for(self, function: FunctionName) -> list[lambda_.ILayerVersion]:
        return [self._layers[name] for name in FUNCTION_LAYERS[function]]

    def function_code(self, function: FunctionName) -> lambda_.Code:
        source = function_dir(function)
        if not (source / "handler.py").is_file():
            # A branch may predate a function (ingest came later): synthesis says so instead of crashing.
            if self.mode == "require":
                raise DeploymentConfigError(f"function {function!r} has no handler.py in {source}")
            self.stand_ins.append(function)
            self._refuse_deployment()
            Annotations.of(self).add_warning_v2(
                f"shardrag:function-missing-{function}",
                f"{source}/handler.py does not exist: the {function} function is a stand-in, not deployable.",
            )
            return lambda_.Code.from_asset(str(_stand_in(function)))
        return lambda_.Code.from_asset(str(source), exclude=_EXCLUDE)
