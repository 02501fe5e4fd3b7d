"""Building the configured stages once per process (a Lambda container or the local runtime).

Handlers reach everything through :func:`query_workflow` and :func:`shard_stores`; tests replace them with
:func:`override` instead of patching modules.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardrag import env
from shardrag.artifacts import ArtifactStore, FileArtifactStore, S3ArtifactStore
from shardrag.bm25 import Bm25Encoder
from shardrag.caching import (
    AnswerCaching,
    DynamoDbAnswerCache,
    DynamoDbIndexVersion,
    FileIndexVersion,
    IndexVersion,
    MemoryAnswerCache,
    QueryEmbeddingCache,
)
from shardrag.caching.answers import config_fingerprint
from shardrag.config import Settings, cached_settings
from shardrag.feedback import DenseFeedback, FeedbackPass
from shardrag.filters import FilterCompiler
from shardrag.fusion import ConvexFuser, Fuser, RrfFuser, ScoreMergeFuser
from shardrag.generation.base import Generator
from shardrag.passages import UnitPassages
from shardrag.placement import (
    CentroidCache,
    CentroidPlacement,
    CentroidStore,
    HashPlacement,
    Placement,
    centroids_name,
)
from shardrag.records import SparseVector
from shardrag.request import Mode
from shardrag.rerank import Reranker, build_reranker
from shardrag.routing import ArtifactCentroidRouter, HashRouter, Router
from shardrag.search import ShardSearcher
from shardrag.secrets import read_secret
from shardrag.store.accounting import TermAccountingStore
from shardrag.store.base import VectorStore
from shardrag.term_stats import CorpusStatsCache, DeltaJournal, TermStatsStore, TermStatsTracker, stats_name
from shardrag.visibility import DynamoDbEpochClock, EpochClock, FileEpochClock
from shardrag.workflow import QueryWorkflow

if TYPE_CHECKING:
    from shardrag.chat.condense import Condenser
    from shardrag.chat.service import ChatService, Retrieve
    from shardrag.indexing import DocumentIndexer
    from shardrag.ingestion.service import IngestService

_lock = threading.Lock()
#: Registry table name when ``SHARDRAG_REGISTRY_TABLE`` is unset (the local runtime's table).
DEFAULT_REGISTRY_TABLE = "shardrag-registry"


class ShardStores:
    """One store per shard, created on first use and kept for the life of the process."""

    def __init__(self, settings: Settings, tracker: TermStatsTracker | None = None) -> None:
        self._settings = settings
        self._tracker = tracker or TermStatsTracker(term_stats_store, stats_journal)
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
                    ca_pem = (
                        read_secret(endpoint.ca_secret, what="Milvus CA certificate", check=_pem_problem)
                        if endpoint.ca_secret
                        else None
                    )
                    milvus = MilvusVectorStore(
                        endpoint,
                        shard=shard,
                        dimension=self._settings.store.dimension,
                        index=self._settings.store.index,
                        max_text_bytes=self._settings.store.max_text_bytes,
                        token=token,
                        ca_pem=ca_pem,
                    )
                    store = TermAccountingStore(
                        milvus, shard=shard, tracker=self._tracker, per_tenant=self._settings.tenancy.mode == "multi"
                    )
                    self._stores[shard] = store
        return store

    def all(self) -> list[VectorStore]:
        return [self(i) for i in range(self.shard_count)]


def _pem_problem(value: str) -> str | None:
    """Why a CA secret is not (yet) a certificate: the stack creates it before the Milvus host writes the PEM."""
    return None if "-----BEGIN CERTIFICATE-----" in value else "holds no PEM certificate (yet)"


def load_store_driver() -> None:
    """Import the Milvus client library now (handlers that search call this at cold start)."""
    import shardrag.store.milvus  # noqa: F401


@lru_cache(maxsize=1)
def shard_stores() -> ShardStores:
    return ShardStores(cached_settings())


@lru_cache(maxsize=1)
def artifact_store() -> ArtifactStore:
    """Index artefacts (BM25 statistics): the artefacts bucket when deployed, else files beside the shards."""
    bucket = os.environ.get(env.ARTIFACTS_BUCKET)
    if bucket:
        import boto3

        return S3ArtifactStore(boto3.client("s3"), bucket, prefix="index")
    return FileArtifactStore(Path(cached_settings().data_dir) / "index")


@lru_cache(maxsize=1)
def term_stats_store() -> TermStatsStore:
    endpoints = cached_settings().shard_endpoints()
    return TermStatsStore(artifact_store(), [stats_name(ep.collection, i) for i, ep in enumerate(endpoints)])


@lru_cache(maxsize=1)
def stats_journal() -> DeltaJournal | None:
    """Where a term-statistics delta that could not be applied is kept durably: the registry table, in a process
    that has one (ingestion, deployed or local); ``None`` elsewhere (such a process never writes rows)."""
    table = os.environ.get(env.REGISTRY_TABLE)
    if not table:
        return None
    import boto3
    from shardrag.ingestion.registry import DynamoDbDeltaJournal

    return DynamoDbDeltaJournal(boto3.client("dynamodb"), table)


@lru_cache(maxsize=1024)
def corpus_stats(scope: str = "") -> CorpusStatsCache:
    """The summed BM25 statistics of ``scope`` (a tenant in multi-tenant mode; "" for one table for all)."""
    return CorpusStatsCache(
        lambda: term_stats_store().merged(scope), ttl_s=cached_settings().retrieval.bm25.stats_ttl_s
    )


def stats_per_tenant() -> bool:
    return cached_settings().tenancy.mode == "multi"


def bm25_encoder(settings: Settings) -> Bm25Encoder:
    bm25 = settings.retrieval.bm25
    return Bm25Encoder(k1=bm25.k1, b=bm25.b, avgdl=bm25.avgdl, window=bm25.window)


@lru_cache(maxsize=1)
def _query_encoder() -> Bm25Encoder:
    return bm25_encoder(cached_settings())


def lexical_query(text: str, tenant: str = "") -> SparseVector:
    """The BM25 query side of ``text`` with the current corpus-wide IDF (the tenant's own corpus in
    multi-tenant mode: another tenant's documents must not move its scores)."""
    encoder = _query_encoder()
    stats = corpus_stats(tenant if stats_per_tenant() else "").get(encoder.query_terms(text))
    return encoder.query(text, stats)


@lru_cache(maxsize=1)
def centroid_cache() -> CentroidCache:
    """The centroid artefact of this process (centroid routing), read once and re-checked every ``refresh_s``."""
    settings = cached_settings()
    return build_centroid_cache(settings, artifact_store())


def build_centroid_cache(settings: Settings, artifacts: ArtifactStore) -> CentroidCache:
    return CentroidCache(
        CentroidStore(artifacts, centroids_name(settings.store.collection)),
        shard_count=settings.store.shard_count,
        refresh_s=settings.routing.centroid.refresh_s,
    )


def build_router(settings: Settings, centroids: CentroidCache | None = None) -> Router:
    """The configured Route stage (``centroids``: the artefact cache; default: this process's)."""
    shard_count = settings.store.shard_count
    if settings.routing.mode == "hash":
        return HashRouter(shard_count)
    options = settings.routing.centroid
    return ArtifactCentroidRouter(
        centroids or centroid_cache(),
        shard_count,
        probe_margin=options.probe_margin,
        max_probe=options.max_probe,
        default_probe=options.default_probe,
    )


def build_placement(settings: Settings, centroids: CentroidCache | None = None) -> Placement:
    """The write path's placement rule, matching :func:`build_router`."""
    shard_count = settings.store.shard_count
    if settings.routing.mode == "hash":
        return HashPlacement(shard_count)
    return CentroidPlacement(centroids or centroid_cache(), settings.routing.centroid, shard_count)


def build_fusers(settings: Settings) -> dict[Mode, Fuser]:
    fusion = settings.retrieval.fusion
    hybrid: Fuser = (
        ConvexFuser(fusion.alpha, depth=fusion.depth, normalisation=fusion.normalisation)
        if fusion.kind == "convex"
        else RrfFuser(fusion.rrf_k, depth=fusion.depth)
    )
    return {"dense": ScoreMergeFuser("dense"), "bm25": ScoreMergeFuser("lexical"), "hybrid": hybrid}


@lru_cache(maxsize=1)
def embedder():  # type: ignore[no-untyped-def]
    """The ONNX embedder, loaded once (imported lazily: only Embed and ingestion need onnxruntime)."""
    from shardrag.embedding.onnx import OnnxEmbedder

    model = OnnxEmbedder.from_settings(cached_settings().embedding)
    model.warm_up()
    return model


@lru_cache(maxsize=1)
def query_embeddings() -> QueryEmbeddingCache:
    """This container's query vectors (a bounded LRU; ``cache.query_embeddings``)."""
    model = embedder()
    return QueryEmbeddingCache(
        lambda text: [float(x) for x in model.embed([text])[0]],
        model_id=model.model_id,
        max_entries=cached_settings().cache.query_embeddings,
    )


def embed_one(text: str) -> list[float]:
    return query_embeddings()(text)


@lru_cache(maxsize=1)
def index_version() -> IndexVersion:
    """The index version (``shardrag.caching.index_version``): an item of the answer-cache table when deployed,
    a file beside the shards locally (shared by the local runtime's processes)."""
    return build_index_version(cached_settings())


def build_index_version(settings: Settings) -> IndexVersion:
    table = os.environ.get(env.ANSWER_CACHE_TABLE)
    if table:
        import boto3

        return DynamoDbIndexVersion(boto3.client("dynamodb"), table)
    return FileIndexVersion(Path(settings.data_dir) / "index" / "index-version")


@lru_cache(maxsize=1)
def epoch_clock() -> EpochClock:
    """The epochs that make overwrites atomic to queries (``shardrag.visibility``)."""
    return build_epoch_clock(cached_settings())


def build_epoch_clock(settings: Settings) -> EpochClock:
    """An item of the registry table where the stack names it to the function (``SHARDRAG_EPOCH_TABLE``: the
    ingest function writes it, the query functions read it), else a file beside the shards that the local
    runtime's processes share."""
    table = os.environ.get(env.EPOCH_TABLE)
    if table:
        import boto3

        return DynamoDbEpochClock(boto3.client("dynamodb"), table)
    return FileEpochClock(Path(settings.data_dir) / "index" / "epochs.json")


def index_changed() -> None:
    """Advance the index version where answers are cached (ingestion and rebalancing call this)."""
    if cached_settings().cache.answers:
        index_version().advance()


def build_answer_caching(settings: Settings, version: IndexVersion | None = None) -> AnswerCaching | None:
    """The answer cache ``settings.cache`` asks for (``None``: off): DynamoDB where the stack created its table
    (``SHARDRAG_ANSWER_CACHE_TABLE``), else this process's memory."""
    cache = settings.cache
    if not cache.answers:
        return None
    from shardrag.generation.prompt import prompt_version

    table = os.environ.get(env.ANSWER_CACHE_TABLE)
    if table:
        import boto3

        store: DynamoDbAnswerCache | MemoryAnswerCache = DynamoDbAnswerCache(
            boto3.client("dynamodb"), table, ttl_s=cache.answer_ttl_s
        )
    else:
        store = MemoryAnswerCache(max_entries=cache.answer_max_entries, ttl_s=cache.answer_ttl_s)
    # Everything besides the request that shapes an answer: a change to any of it must not serve old answers.
    fingerprint = config_fingerprint(
        {
            "release": _release(),
            "prompt": prompt_version(),
            "generator": settings.generator.model_dump(),
            "rerank": settings.rerank.model_dump(),
            "retrieval": settings.retrieval.model_dump(),
            "routing": settings.routing.model_dump(),
            "embedding": settings.embedding.model_dump(),
            "shards": settings.store.shard_count,
        }
    )
    return AnswerCaching(store, version or build_index_version(settings), fingerprint=fingerprint)


def _release() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shardrag")
    except PackageNotFoundError:  # the Lambda layer carries the package without its metadata
        return "unpackaged"


@lru_cache(maxsize=1)
def reranker() -> Reranker:
    return build_reranker(cached_settings().rerank)


@lru_cache(maxsize=1)
def generator() -> Generator:
    from shardrag.generation.factory import build_generator

    return build_generator(cached_settings().generator)


def build_query_workflow(
    settings: Settings,
    *,
    embed: Callable[[str], list[float]] = embed_one,
    lexical: Callable[..., SparseVector] = lexical_query,
    stores: Callable[[int], VectorStore] | None = None,
    make_generator: Callable[[], Generator] = generator,
    make_reranker: Callable[[], Reranker] = reranker,
    centroids: CentroidCache | None = None,
    answers: AnswerCaching | None = None,
    clock: EpochClock | None = None,
) -> QueryWorkflow:
    """``centroids``: the centroid artefact cache for ``routing.mode: centroid`` (default: this process's).
    ``answers``: the answer cache (default: as ``settings.cache`` says). ``clock``: the epochs each query takes
    its snapshot of (default: :func:`build_epoch_clock`)."""
    shard_count = settings.store.shard_count
    searcher = ShardSearcher(stores or shard_stores(), shard_count, timeout_s=settings.store.search_timeout_s)
    fusers = build_fusers(settings)
    return QueryWorkflow(
        embed=embed,
        lexical_query=lexical,
        router=build_router(settings, centroids),
        searcher=searcher,
        fusers=fusers,
        default_mode=settings.retrieval.mode,
        fusion_depth=settings.retrieval.fusion.depth,
        generator=make_generator,
        reranker=make_reranker if settings.rerank.kind != "none" else None,
        rerank_candidates=settings.rerank.max_candidates,
        rerank_top_n=settings.rerank.top_n,
        filter_compiler=FilterCompiler(settings.retrieval.metadata_fields),
        default_top_k=settings.retrieval.top_k,
        min_candidates=settings.retrieval.min_candidates_per_shard,
        shard_count=shard_count,
        multi_tenant=settings.tenancy.mode == "multi",
        answers=answers if answers is not None else build_answer_caching(settings),
        passages=(
            UnitPassages(stores or shard_stores(), bm25_encoder(settings).tokenizer)
            if settings.retrieval.bm25.window > 0
            else None
        ),
        snapshot=(clock if clock is not None else build_epoch_clock(settings)).snapshot,
        snapshot_max_age_s=settings.ingestion.retire_grace_s * 0.75 if settings.ingestion.retire_grace_s else None,
        feedback=build_feedback(settings, searcher, fusers["hybrid"], stores or shard_stores()),
        feedback_default=settings.retrieval.feedback.enabled,
        feedback_budget_ms=settings.retrieval.feedback.budget_ms,
    )


def build_feedback(
    settings: Settings, searcher: ShardSearcher, fuser: Fuser, stores: Callable[[int], VectorStore]
) -> FeedbackPass:
    """The hybrid query's dense feedback round (``retrieval.feedback``)."""
    feedback = settings.retrieval.feedback
    return FeedbackPass(
        DenseFeedback(documents=feedback.documents, weight=feedback.weight),
        fuser=fuser,
        searcher=searcher,
        store_for=stores,
        fusion_depth=settings.retrieval.fusion.depth,
        workers=settings.store.shard_count,
        # One shard search's deadline for the whole round, at most 8 s: the Feedback state allows 10 s.
        timeout_s=min(settings.store.search_timeout_s, 8.0),
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


def build_indexer(
    settings: Settings,
    *,
    stores: Callable[[int], VectorStore] | None = None,
    centroids: CentroidCache | None = None,
) -> DocumentIndexer:
    """The write path's indexer: the configured chunker on the model's own tokenizer, the shared embedder."""
    from shardrag.chunking import Chunker
    from shardrag.indexing import DocumentIndexer

    model = embedder()
    per_tenant = settings.tenancy.mode == "multi"
    chunker = Chunker(
        size=settings.ingestion.chunk_size, overlap=settings.ingestion.chunk_overlap, token_spans=model.token_spans
    )
    return DocumentIndexer(
        chunker=chunker,
        # A chunk's vector must not depend on its batch, or a reused vector would differ (in the last bits) from
        # the one a fresh ingest computes (``embedding.reproducible``).
        embedder=model.reproducible() if settings.embedding.reproducible else model,
        store_for=stores or shard_stores(),
        shard_count=settings.store.shard_count,
        bm25=bm25_encoder(settings),
        placement=build_placement(settings, centroids),
        corpus_stats=lambda tenant: term_stats_store().merged(tenant if per_tenant else ""),
        model_id=model.model_id,
    )


@lru_cache(maxsize=1)
def ingest_service() -> IngestService:
    """The ingest function's service, built once per container (boto3 clients honour ``AWS_ENDPOINT_URL``)."""
    import boto3
    from shardrag.ingestion.service import build_ingest_service, sqs_requeue

    settings = cached_settings()
    queue_url = os.environ.get(env.INGEST_QUEUE_URL)
    return build_ingest_service(
        settings.ingestion,
        indexer=build_indexer(settings),
        stores=shard_stores(),
        shard_count=settings.store.shard_count,
        s3_client=boto3.client("s3"),
        dynamodb_client=boto3.client("dynamodb"),
        table_name=os.environ.get(env.REGISTRY_TABLE, DEFAULT_REGISTRY_TABLE),
        requeue=sqs_requeue(boto3.client("sqs"), queue_url) if queue_url else None,
        on_change=index_changed if settings.cache.answers else None,
        clock=epoch_clock(),
    )


def retry_busy_soon(receipt_handle: str | None, receive_count: str | int | None) -> int | None:
    """Shorten a BUSY ingest record's wait (:mod:`shardrag.ingestion.busy`); ``None`` where there is no queue to
    ask (the record then waits out the queue's visibility timeout)."""
    queue_url = os.environ.get(env.INGEST_QUEUE_URL)
    if not queue_url or not receipt_handle:
        return None
    import boto3
    from shardrag.ingestion.busy import retry_busy_soon as shorten

    # A client per call: this path runs only when a key is busy.
    return shorten(boto3.client("sqs"), queue_url, receipt_handle, int(receive_count or 1))


#: Conversations table name when ``SHARDRAG_CONVERSATIONS_TABLE`` is unset (the local runtime's table).
DEFAULT_CONVERSATIONS_TABLE = "shardrag-conversations"


def conversations_table() -> str:
    return os.environ.get(env.CONVERSATIONS_TABLE, DEFAULT_CONVERSATIONS_TABLE)


def build_condenser(settings: Settings, make_generator: Callable[[], Generator] = generator) -> Condenser:
    """The LLM condenser when a model generates the answers (it rewrites with the same model), else the
    deterministic one."""
    from shardrag.chat.condense import DeterministicCondenser, LlmCondenser

    if settings.generator.kind == "extractive":
        return DeterministicCondenser()
    model = make_generator()
    if not hasattr(model, "complete"):
        return DeterministicCondenser()
    return LlmCondenser(model)  # type: ignore[arg-type]


def build_chat_service(
    retrieve: Retrieve,
    *,
    settings: Settings | None = None,
    dynamodb_client: Any | None = None,
    make_generator: Callable[[], Generator] = generator,
) -> ChatService:
    """The chat service over ``retrieve`` (the query workflow as this runtime runs it)."""
    import boto3
    from shardrag.chat.conversations import DynamoDbConversationStore
    from shardrag.chat.service import ChatService

    settings = settings or cached_settings()
    store = DynamoDbConversationStore(dynamodb_client or boto3.client("dynamodb"), conversations_table())
    return ChatService(
        retrieve=retrieve,
        generator=make_generator,  # type: ignore[arg-type]
        store=store,
        condenser=build_condenser(settings, make_generator),
    )


def reset_caches() -> None:
    """Forget every cached object (settings included): the next call rebuilds from the environment."""
    override(None)
    for cached in (
        cached_settings,
        shard_stores,
        artifact_store,
        centroid_cache,
        term_stats_store,
        stats_journal,
        corpus_stats,
        _query_encoder,
        embedder,
        query_embeddings,
        index_version,
        epoch_clock,
        generator,
        reranker,
        ingest_service,
    ):
        cached.cache_clear()
