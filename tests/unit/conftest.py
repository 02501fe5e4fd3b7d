from __future__ import annotations

import pytest
from shardrag.embedding.hashing import HashingEmbedder


@pytest.fixture
def hashing_embedder() -> HashingEmbedder:
    return HashingEmbedder()
