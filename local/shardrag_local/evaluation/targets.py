"""Quality targets of ``shardrag eval``, per dataset and split: never one corpus's thresholds applied to another.

Where a run's targets come from, first found wins: ``--targets FILE``; ``shardrag-targets.json`` beside the
dataset (a folder the user owns); the project's own ``bench/targets/<dataset>.<split>.json`` for the corpora it was
developed on. A dataset with none of these gets no absolute target, only the relative one every corpus has (BM25
mode within ``bm25_margin`` of bm25s in the same run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shardrag_local.evaluation.system import PROJECT_ROOT

#: A targets file beside a dataset.
BESIDE_DATASET = "shardrag-targets.json"
PACKAGED = PROJECT_ROOT / "bench" / "targets"


class DatasetTargets(BaseModel):
    """nDCG@10 each API mode must reach, and how far below bm25s the BM25 mode may be."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    ndcg_at_10: dict[Literal["dense", "bm25", "hybrid"], float] = Field(default_factory=dict, alias="ndcg@10")
    bm25_margin: float = Field(default=0.005, ge=0.0, le=1.0)
    #: Where the figures come from (an issue, a reference table, a study), printed with the report.
    source: str = ""


def packaged_path(name: str, split: str) -> Path:
    return PACKAGED / f"{name}.{split}.json"


def load_targets(path: Path) -> DatasetTargets:
    try:
        return DatasetTargets.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError) as exc:
        raise SystemExit(f"targets file {path}: {exc}") from None


def find_targets(dataset: Path, name: str, split: str, explicit: Path | None = None) -> tuple[DatasetTargets, str]:
    """The targets of ``dataset`` (``name``, ``split``) and the file they came from ("" when none applies)."""
    for path in (explicit, dataset / BESIDE_DATASET, packaged_path(name, split)):
        if path is not None and (path == explicit or path.is_file()):
            return load_targets(path), _display(path)
    return DatasetTargets(), ""


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
