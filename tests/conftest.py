"""Shared fixtures. Tiers: ``unit`` (pure logic), ``integration`` (real Milvus Lite, the real model, the local
AWS emulation running the real ASL and handlers), ``infrastructure`` (CDK synthesis and checks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "build" / "model"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("SHARDRAG_MODEL_DIR", str(MODEL_DIR))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT
