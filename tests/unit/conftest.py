from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pytest
from shardrag.bm25 import Bm25Encoder, CorpusStats
from shardrag.config import Settings
from shardrag.embedding.hashing import HashingEmbedder
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.services import build_query_workflow
from shardrag.store.base import VectorStore
from shardrag.workflow import QueryWorkflow


@pytest.fixture
def hashing_embedder() -> HashingEmbedder:
    return HashingEmbedder()


WorkflowOver = Callable[[Settings, Sequence[VectorStore], Iterable[str]], QueryWorkflow]


@pytest.fixture
def workflow_over(hashing_embedder: HashingEmbedder) -> WorkflowOver:
    """Builds the query workflow over shards already indexed with some documents: the hashing embedder, BM25 with
    the statistics of what the shards hold of those documents, the extractive generator."""
    return lambda settings, stores, doc_ids: _workflow_over(settings, stores, doc_ids, hashing_embedder)


def _workflow_over(
    settings: Settings, stores: Sequence[VectorStore], doc_ids: Iterable[str], embedder: HashingEmbedder
) -> QueryWorkflow:
    stats = CorpusStats()
    docs = list(doc_ids)
    for store in stores:
        stored = store.stored_terms([cid for doc in docs for cid in store.chunk_ids(doc)])
        stats.count((t.sparse for t in stored.values()), +1)
    return build_query_workflow(
        settings,
        embed=lambda text: [float(x) for x in embedder.embed([text])[0]],
        lexical=lambda text: Bm25Encoder().query(text, stats),
        stores=stores.__getitem__,
        make_generator=ExtractiveGenerator,
    )
