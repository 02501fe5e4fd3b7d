"""The ingestion embedder (the real ONNX model) gives a text the same vector bytes whatever it is embedded with:
what makes a vector reused on re-ingest exactly what a fresh ingest computes. The batched embedder does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shardrag.embedding.onnx import OnnxEmbedder
from shardrag.embedding.stop import stoppable

pytestmark = pytest.mark.integration
MODEL = Path(__file__).resolve().parents[2] / "build" / "model"
WORDS = [
    "granite",
    "harbor",
    "meadow",
    "lantern",
    "copper",
    "violet",
    "thunder",
    "orchard",
    "pepper",
    "falcon",
    "willow",
    "ember",
    "river",
    "stone",
]
TEXTS = [f"long\n{' '.join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(40 + i % 37))} section{i}" for i in range(48)]


def test_a_texts_vector_does_not_depend_on_the_batch_it_falls_in() -> None:
    embedder = OnnxEmbedder(MODEL, batch_size=16).reproducible()
    whole = embedder.embed(TEXTS)
    alone = np.concatenate([embedder.embed([text]) for text in TEXTS[:12]])
    shifted = embedder.embed([*TEXTS[5:31], "a short companion"])[:26]
    assert [a.tobytes() for a in whole[:12]] == [b.tobytes() for b in alone]
    assert [a.tobytes() for a in whole[5:31]] == [b.tobytes() for b in shifted]
    # The same vectors as the batched embedder up to rounding: only the bytes differ, never the meaning.
    batched = OnnxEmbedder(MODEL, batch_size=16).embed(TEXTS)
    np.testing.assert_allclose(whole, batched, atol=1e-6)


def test_embedding_stops_between_model_runs_when_its_owner_says_so() -> None:
    # What lets ingestion abandon a replaced version inside a write batch (shardrag.embedding.stop).
    embedder = OnnxEmbedder(MODEL, batch_size=16).reproducible()
    calls: list[int] = []

    class Replaced(Exception):
        pass

    def check() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Replaced

    with stoppable(check), pytest.raises(Replaced):
        embedder.embed(TEXTS)
    assert len(calls) == 3  # one text per model run: stopped after two of 48
    assert embedder.embed(TEXTS[:2]).shape == (2, embedder.dimension)  # outside the block, nothing checks
