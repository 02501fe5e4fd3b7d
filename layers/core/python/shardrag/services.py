"""Building the configured stages once per process (a Lambda container or the local runtime).

Handlers reach everything through :func:`query_workflow` and :func:`shard_stores`; tests replace them with
:func:`override` instead of patching modules.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from shardrag import env
from shardrag.config import Settings, cached_settings
from shardrag.filters import FilterCompiler
from shardrag.fusion import ScoreMergeFuser
from shardrag.generation.base import Generator
from shardrag.routing import HashRouter
from shardrag.search import ShardSearcher
from shardrag.secrets import read_secret
from shardrag.store.base import VectorStore
from shardrag.workflow import QueryWorkflow

if TYPE_CHECKING:
    from shardrag.indexing import DocumentIndexer
    from shardrag.ingestion.service import IngestService

_lock = threading.Lock()
#: Registry table name when ``SHARDRAG_REGISTRY_TABLE`` is unset (the local runtime's table).
DEFAULT_REGISTRY_TABLE = "shardrag-registry"


class ShardStores:
    """One store per shard, created on first use and kept for the life of the process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._endpoints = settings.shard_endpoints()
        self._stores: dict[int, VectorStore] = {}
        self._lock = threading.Lock()

    @property
    def shard_count(self) -> int:
        return len(self._endpoints)

    def __call__(self, shard: int) -> VectorStore:
        store = self._stores.get(shard)
        if store is None:
            with self._lock:
                store = self._stores.get(shard)
                if store is None:
                    # Imported here: pymilvus costs ~0.5 s of cold start that only ShardSearch and ingestion need.
                    from shardrag.store.milvus import MilvusVectorStore

                    endpoint = self._endpoints[shard]
                    token = read_secret(endpoint.token_secret) if endpoint.token_secret else None
                    store = MilvusVectorStore(
                        endpoint,
                        shard=shard,
                        dimension=self._settings.store.dimension,
                        index=self._settings.store.index,
                        max_text_bytes=self._settings.store.max_text_bytes,
                        token=token,
                    )
                    self._stores[shard] = store
        return store

    def all(self) -> list[VectorStore]:
        return [self(i) for i in range(self.shard_count)]


def load_store_driver() -> None:
    """Import the Milvus client library now (handlers that search call this at cold start)."""
    import shardrag.store.milvus  # noqa: F401


@lru_cache(maxsize=1)
def shard_stores() -> ShardStores:
    return ShardStores(cached_settings())


@lru_cache(maxsize=1)
def embedder():  # type: ignore[no-untyped-def]
    """The ONNX embedder, loaded once (imported lazily: only Embed and ingestion need onnxruntime)."""
    from shardrag.embedding.onnx import OnnxEmbedder

    model = OnnxEmbedder.from_settings(cached_settings().embedding)
    model.warm_up()
    return model


def embed_one(text: str) -> list[float]:
    return [float(x) for x in embedder().embed([text])[0]]


@lru_cache(maxsize=1)
def generator() -> Generator:
    from shardrag.generation.factory import build_generator

    return build_generator(cached_settings().generator)


def build_query_workflow(
    settings: Settings,
    *,
    embed: Callable[[str], list[float]] = embed_one,
    stores: Callable[[int], VectorStore] | None = None,
    make_generator: Callable[[], Generator] = generator,
) -> QueryWorkflow:
    shard_count = settings.store.shard_count
    return QueryWorkflow(
        embed=embed,
        router=HashRouter(shard_count),
        searcher=ShardSearcher(stores or shard_stores(), shard_count),
        fuser=ScoreMergeFuser(),
        generator=make_generator,
        filter_compiler=FilterCompiler(settings.retrieval.metadata_fields),
        default_top_k=settings.retrieval.top_k,
        min_candidates=settings.retrieval.min_candidates_per_shard,
        shard_count=shard_count,
    )


_workflow: QueryWorkflow | None = None


def query_workflow() -> QueryWorkflow:
    """The process-wide workflow, built on first use from :func:`cached_settings`."""
    global _workflow
    if _workflow is None:
        with _lock:
            if _workflow is None:
                _workflow = build_query_workflow(cached_settings())
    return _workflow


def override(workflow: QueryWorkflow | None) -> None:
    """Install a workflow (tests, the local runtime) or, with ``None``, go back to building from settings."""
    global _workflow
    with _lock:
        _workflow = workflow


def build_indexer(settings: Settings, *, stores: Callable[[int], VectorStore] | None = None) -> DocumentIndexer:
    """The write path's indexer: the configured chunker on the model's own tokenizer, the shared embedder."""
    from shardrag.chunking import Chunker
    from shardrag.indexing import DocumentIndexer

    model = embedder()
    chunker = Chunker(
        size=settings.ingestion.chunk_size, overlap=settings.ingestion.chunk_overlap, token_spans=model.token_spans
    )
    return DocumentIndexer(
        chunker=chunker, embedder=model, store_for=stores or shard_stores(), shard_count=settings.store.shard_count
    )


@lru_cache(maxsize=1)
def ingest_service() -> IngestService:
    """The ingest function's service, built once per container (boto3 clients honour ``AWS_ENDPOINT_URL``)."""
    import boto3
    from shardrag.ingestion.service import FreshDocuments, build_ingest_service

    settings = cached_settings()
    fresh = FreshDocuments(shard_stores())
    return build_ingest_service(
        settings.ingestion,
        indexer=build_indexer(settings, stores=fresh),
        fresh=fresh,
        stores=shard_stores(),
        shard_count=settings.store.shard_count,
        s3_client=boto3.client("s3"),
        dynamodb_client=boto3.client("dynamodb"),
        table_name=os.environ.get(env.REGISTRY_TABLE, DEFAULT_REGISTRY_TABLE),
    )


def reset_caches() -> None:
    """Forget every cached object (settings included): the next call rebuilds from the environment."""
    override(None)
    for cached in (cached_settings, shard_stores, embedder, generator, ingest_service):
        cached.cache_clear()
