#!/usr/bin/env python3
"""CDK entry point: ``cdk synth|deploy -c env=<name>`` (environments live in cdk.json context)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run from the project root as `python cdk/app.py`: make the CDK package and the core package importable
# even where the project is not pip-installed.
_ROOT = Path(__file__).resolve().parents[1]
for _path in (_ROOT / "cdk", _ROOT / "layers" / "core" / "python"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from aws_cdk import App  # noqa: E402
from shardrag_cdk.config import DeploymentConfigError  # noqa: E402


def main() -> int:
    app = App()
    try:
        from shardrag_cdk.application import build

        build(app)
    except DeploymentConfigError as exc:
        print(f"ShardRAG configuration error: {exc}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
