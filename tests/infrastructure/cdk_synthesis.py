"""Synthesising ShardRAG environments for the infrastructure tests (helpers; fixtures are in conftest.py).

Every environment in ``cdk.json`` is synthesised with the cdk-nag rule packs on, exactly as ``cdk synth``
would, except that dependency layers are stand-ins (context ``shardrag:assets=stub``): these tests check the
template; the package-size test checks the built layers.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT / "cdk", ROOT / "layers" / "core" / "python"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CDK_DISABLE_VERSION_CHECK", "1")

CDK_CONTEXT: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]
ENVIRONMENTS = sorted(CDK_CONTEXT["environments"])


@dataclass
class Synthesis:
    """One synthesised environment: its config, template, template file and cdk-nag violations."""

    name: str
    config: Any
    template: dict[str, Any]
    template_file: Path
    violations: list[str] = field(default_factory=list)

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == resource_type}

    def properties(self, resource_type: str) -> list[dict[str, Any]]:
        return [v.get("Properties", {}) for v in self.resources(resource_type).values()]


def _violations(outdir: Path) -> list[str]:
    report = outdir / "validation-report.json"
    if not report.exists():
        return []
    found = []
    for plugin in json.loads(report.read_text()).get("pluginReports", []):
        for violation in plugin.get("violations", []):
            for construct in violation.get("violatingConstructs", []):
                found.append(f"{violation['ruleName']} at {construct['constructPath']}")
    return found


def synthesise(name: str, outdir: Path, context_overrides: dict[str, Any] | None = None) -> Synthesis:
    """Synthesise environment ``name`` of ``cdk.json`` (optionally with altered context) into ``outdir``."""
    from aws_cdk import App
    from shardrag_cdk.application import build

    context = {**CDK_CONTEXT, "env": name, "shardrag:assets": "stub", **(context_overrides or {})}
    app = App(context=context, outdir=str(outdir))
    stack = build(app)
    violations: list[str] = []
    try:
        app.synth()
    except Exception as exc:  # the validation plugins interrupt synthesis; their report says why
        violations = _violations(outdir) or [f"synthesis failed: {exc}"]
    template_file = outdir / f"{stack.stack_name}.template.json"
    if not template_file.exists():  # synthesis stopped before writing: render the template without plugins
        from aws_cdk.assertions import Template

        template = Template.from_stack(stack).to_json()
        template_file.write_text(json.dumps(template))
    from shardrag_cdk.config import load_environment

    config = load_environment(context["environments"], name)
    return Synthesis(name, config, json.loads(template_file.read_text()), template_file, violations)
