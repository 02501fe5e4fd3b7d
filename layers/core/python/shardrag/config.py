"""Runtime settings: one typed model, validated once at cold start.

The same model is built from ``cdk.json`` context by the CDK app (per environment) and from a JSON file or the
``SHARDRAG_SETTINGS`` variable by the handlers and the local runtime. Explicit argument beats environment
variable beats default.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from shardrag import env
from shardrag.errors import ConfigurationError
from shardrag.rerank import RerankSettings


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShardEndpoint(_Model):
    """One shard: a Milvus endpoint and a collection.

    ``uri`` is a Milvus Lite data file (``…/shard-0.db``, the embedded default) or a server URL
    (``http://host:19530``, a Zilliz endpoint). The token lives in Secrets Manager under ``token_secret`` and is
    read at cold start: never put it in an environment variable.
    """

    uri: str = Field(min_length=1)
    collection: str = Field(default="shardrag_chunks", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    db_name: str = ""
    token_secret: str | None = None
    #: Secret holding the PEM of the CA that signed the server's certificate (a private CA: a self-hosted Milvus);
    #: None trusts the system roots (Zilliz Cloud, a public certificate).
    ca_secret: str | None = None
    #: The name the server's certificate is issued for, when ``uri`` reaches it by another name or an IP address.
    server_name: str = ""

    @property
    def is_lite(self) -> bool:
        return self.uri.endswith(".db")


class IndexSettings(_Model):
    """Dense index. FLAT is exact, and on Milvus Lite no slower than the ANN indexes at shard sizes that
    sharding keeps small (per-row dedup dominates a search there; see BENCHMARKS.md)."""

    type: Literal["FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"] = "FLAT"
    params: dict[str, Any] = Field(default_factory=dict)
    search_params: dict[str, Any] = Field(default_factory=dict)


class StoreSettings(_Model):
    shard_count: int = Field(default=4, ge=1, le=64)
    #: Explicit endpoints, one per shard; empty means ``endpoint`` or, without it, Milvus Lite files under the data
    #: directory.
    shards: tuple[ShardEndpoint, ...] = ()
    #: One Milvus deployment for every shard: shard ``i`` is the collection ``<collection>_shard<i>`` on it (its own
    #: ``collection`` is ignored). What a deployed stack sets: the settings stay the same size whatever the shards.
    endpoint: ShardEndpoint | None = None
    collection: str = Field(default="shardrag_chunks", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    dimension: int = Field(default=384, ge=8, le=4096)
    index: IndexSettings = IndexSettings()
    #: Bound on a chunk's text in the store (Milvus VARCHAR max_length, in bytes).
    max_text_bytes: int = Field(default=8192, ge=256, le=65535)
    #: Seconds one shard search (dense and BM25 together) may take before the shard counts as busy. Below the
    #: ShardSearch task's TimeoutSeconds (10 s in ``statemachines/query.asl.json``) so that the handler, which can
    #: tell a saturated shard from an unreachable one, decides, not Step Functions' timeout, which cannot.
    search_timeout_s: float = Field(default=8.0, gt=0.0, le=60.0)

    @model_validator(mode="after")
    def _shards_match_count(self) -> StoreSettings:
        if self.shards and self.endpoint is not None:
            raise ValueError("store.shards and store.endpoint are exclusive: one endpoint per shard, or one for all")
        if self.shards and len(self.shards) != self.shard_count:
            raise ValueError(
                f"store.shards lists {len(self.shards)} endpoints but store.shard_count is {self.shard_count}"
            )
        return self

    def endpoints(self, data_dir: Path) -> tuple[ShardEndpoint, ...]:
        """The configured endpoints, or one Milvus Lite file per shard under ``data_dir``."""
        if self.shards:
            return self.shards
        if self.endpoint is not None:
            shared = self.endpoint
            return tuple(
                shared.model_copy(update={"collection": f"{self.collection}_shard{i}"}) for i in range(self.shard_count)
            )
        return tuple(
            ShardEndpoint(uri=str(data_dir / "shards" / f"shard-{i}.db"), collection=self.collection)
            for i in range(self.shard_count)
        )


class CentroidSettings(_Model):
    """Centroid (Voronoi) routing (``shardrag.centroids``). Defaults from ``bench/centroid_study.py`` on SciFact,
    8 shards: 2.75 shards probed on average, relative recall@10 0.975, storage x1.32."""

    #: A chunk is also stored on every shard whose centroid is within this cosine margin of its nearest one ...
    replicate_margin: float = Field(default=0.06, ge=0.0, le=2.0)
    #: ... on at most this many shards in all (the primary included; 1 = no replication).
    max_replicas: int = Field(default=2, ge=1, le=64)
    #: Adaptive probing: the nearest shard, then every shard whose centroid is within this margin of the best ...
    probe_margin: float = Field(default=0.16, ge=0.0, le=2.0)
    #: ... at most this many shards in all.
    max_probe: int = Field(default=4, ge=1, le=64)
    #: A fixed number of shards per query instead of adaptive probing (a request's ``probe`` overrides both).
    default_probe: int | None = Field(default=None, ge=1, le=64)
    #: k-means: stored vectors sampled for (re)training, Lloyd iterations, balance penalty, seed.
    train_sample: int = Field(default=8192, ge=1, le=1_000_000)
    iterations: int = Field(default=50, ge=1, le=1000)
    balance: float = Field(default=0.05, ge=0.0, le=1.0)
    seed: int = 0
    #: How long a container routes by the centroids it loaded before checking the artefact for a newer version
    #: (a ``shardrag rebalance`` waits this long before deleting chunks from the shards they left).
    refresh_s: float = Field(default=300.0, ge=0.0, le=86_400.0)


class RoutingSettings(_Model):
    """``hash``: every chunk of a document on one hashed shard, every query visits every shard. ``centroid``:
    chunks placed by their nearest k-means centroid (plus near-boundary replicas), queries visit only the shards
    nearest to them."""

    mode: Literal["hash", "centroid"] = "hash"
    centroid: CentroidSettings = CentroidSettings()


class EmbeddingSettings(_Model):
    #: Directory with ``model.onnx`` + ``tokenizer.json`` (``make model`` builds it).
    model_dir: str = "build/model"
    max_seq_length: int = Field(default=256, ge=16, le=512)
    batch_size: int = Field(default=32, ge=1, le=1024)
    #: onnxruntime intra-op threads; 0 lets onnxruntime decide (all cores).
    threads: int = Field(default=0, ge=0, le=64)
    #: Ingestion embeds each chunk on its own, so that its vector does not depend on the batch it falls in: a
    #: vector reused on re-ingest is then exactly what a fresh ingest computes. Off: batched, ~10 % faster.
    reproducible: bool = True


class Bm25Settings(_Model):
    """BM25 over lexical units (``shardrag.bm25``, ``shardrag.lexical_units``): a whole document, or a run of its
    chunks, up to ``window`` terms, scored on the unit's first row. ``avgdl`` is measured: the term statistics
    keep the units' total length beside their count, and each write weighs its units by the mean length of the
    corpus it joins."""

    #: k1 1.2, b 0.9: chosen with the fusion below by the hybrid's worst case over the development corpora
    #: (SciFact test, NFCorpus dev, mtrag-mini; ``bench/document_fusion_study.py``, BENCHMARKS.md "Retrieval
    #: defaults"), among the BM25 settings within 0.005 of bm25s on every corpus (this one: -0.0017 at worst;
    #: bm25s's own k1 1.5, b 0.75: -0.0012, but its best hybrid at 100 candidates ends 0.0007 below the reference
    #: fusion where this one ends 0.0012 above).
    k1: float = Field(default=1.2, ge=0.0, le=10.0)
    b: float = Field(default=0.9, ge=0.0, le=1.0)
    #: None: measured (the default). A number pins the mean unit length every unit is weighed against.
    avgdl: float | None = Field(default=None, gt=0.0, le=100_000.0)
    #: The most BM25 terms of a lexical unit (``shardrag.lexical_units``): a document up to this long is scored
    #: by BM25 as a whole, a longer one in runs of consecutive chunks this long; 0: every chunk on its own.
    window: int = Field(default=1024, ge=0, le=100_000)
    #: How long the query side keeps the summed term statistics before re-reading them.
    stats_ttl_s: float = Field(default=30.0, ge=0.0, le=3600.0)


class FusionSettings(_Model):
    """How ``hybrid`` combines the dense and BM25 rankings after each is merged across shards: convex, z-score,
    alpha 0.6, 100 per modality, a chunk's BM25 side its document's best lexical candidate (``ConvexFuser``).
    The best worst case over the development corpora of min-max, z-score and RRF at weights 0.4-0.65 and 50/100/200
    candidates (``bench/document_fusion_study.py``): +0.0012 over the reference fusion at worst; 200 candidates
    gain ~0.001 but leave generation ~300 characters per hit in the state payload."""

    kind: Literal["convex", "rrf"] = "convex"
    #: Convex: weight of the dense score (BM25 gets 1 - alpha).
    alpha: float = Field(default=0.6, ge=0.0, le=1.0)
    normalisation: Literal["zscore", "minmax"] = "zscore"
    #: Candidates per modality that fusion normalises and combines (the global top of each merged list).
    depth: int = Field(default=100, ge=1, le=200)
    #: RRF: the rank constant.
    rrf_k: int = Field(default=60, ge=1, le=1000)


class FeedbackSettings(_Model):
    """Dense pseudo-relevance feedback for hybrid queries (``shardrag.feedback``): after the first pass, the query
    vector moves towards the opening chunks of the first ``documents`` fused documents (``weight`` against the
    unit query vector) and the dense side is searched again (the Feedback state)."""

    #: Whether a hybrid query runs the second round when its request does not say (``feedback`` in the request).
    enabled: bool = True
    documents: int = Field(default=2, ge=1, le=10)
    weight: float = Field(default=1.0, gt=0.0, le=10.0)
    #: A query that has already taken longer than this (from the start of its execution to the Feedback state)
    #: skips the round and answers from the first pass: the round is a second set of shard searches, and a
    #: query this slow means the shards are queueing. On a quiet machine a query reaches the state in ~60-160 ms
    #: (BENCHMARKS.md, "Dense feedback"). 0: never skip.
    budget_ms: float = Field(default=300.0, ge=0.0, le=20_000.0)


class RetrievalSettings(_Model):
    #: Default mode of a query without ``mode``.
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    bm25: Bm25Settings = Bm25Settings()
    fusion: FusionSettings = FusionSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    top_k: int = Field(default=8, ge=1, le=50)
    #: Hits each shard returns: at least the requested top_k so that the merge is exact.
    min_candidates_per_shard: int = Field(default=10, ge=1, le=200)
    #: Metadata fields that ``filters`` may name, with their type (anything else is a 400).
    metadata_fields: dict[str, Literal["string", "number", "bool", "date"]] = Field(default_factory=dict)


class GeneratorSettings(_Model):
    kind: Literal["extractive", "bedrock", "openai"] = "extractive"
    #: Bedrock model id / inference profile, or the model name sent to an OpenAI-compatible endpoint.
    #: Claude Haiku 5.5 through the US cross-Region inference profile (Anthropic models on Bedrock are invoked through
    #: an inference profile; outside the US use its ``eu.`` / ``apac.`` / ``global.`` profile).
    model_id: str = "us.anthropic.claude-haiku-5-5"
    endpoint_url: str = ""
    api_key_secret: str | None = None
    region: str | None = None
    max_tokens: int = Field(default=512, ge=16, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    #: Token budget for the retrieved context inside the prompt.
    context_token_budget: int = Field(default=3000, ge=100, le=200_000)
    timeout_s: float = Field(default=30.0, gt=0, le=300)
    #: Passages quoted by the extractive generator.
    extractive_passages: int = Field(default=3, ge=1, le=10)


class IngestionSettings(_Model):
    """The write path: chunking, limits on hostile input, and how large objects are read in parts."""

    #: Chunk window in model tokens, and the overlap between consecutive windows of one section. 128/32 measured
    #: best on SciFact through the real path (dense nDCG@10 0.685 vs 0.668 at 200/40; BENCHMARKS.md); the model
    #: was trained on 128-token inputs.
    chunk_size: int = Field(default=128, ge=8, le=512)
    chunk_overlap: int = Field(default=32, ge=0, le=256)
    #: Objects larger than this are rejected (reason ``too_large``) without being downloaded.
    max_file_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    #: Objects are read in byte ranges of this size and indexed part by part, bounding memory and the time one
    #: part takes: 1 MiB of text is about 2,500 chunks at 128/32 tokens, about 30 s at the measured 88.6
    #: chunks/s on 2 cores, so a part always fits in one invocation with room to spare (README, "Integrity").
    part_bytes: int = Field(default=1024 * 1024, ge=4096)
    #: Chunks written per store call while an object is indexed; between calls the run checks (at most once a
    #: second) that the bucket still holds its version, and stops if a newer upload replaced it.
    write_batch_chunks: int = Field(default=128, ge=1, le=10_000)
    #: Rows an overwrite retired are deleted this long after its commit (``shardrag.visibility``): a query that read
    #: its snapshot before the commit still finds them, and queries refuse a snapshot older than three quarters of
    #: it (429: retry). 0: deleted at once (a query in flight across the commit may then miss the changed rows).
    #: Deployed, the deletion is an ingest message delayed by SQS (at most 900 s).
    retire_grace_s: int = Field(default=60, ge=0, le=900)
    #: JSON Lines documents embedded together (one indexer call, one registry batch).
    jsonl_batch_documents: int = Field(default=256, ge=1, le=10_000)
    #: Decompressed ``.gz`` output: absolute cap and cap relative to the compressed size (bomb guard).
    max_decompressed_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    max_compression_ratio: int = Field(default=200, ge=2)
    #: Pages read from one PDF, and text extracted from one document (guards against stream bombs).
    max_pdf_pages: int = Field(default=5000, ge=1)
    max_document_chars: int = Field(default=64 * 1024 * 1024, ge=1)
    #: Where a document's tenant comes from: one tenant for all, the first segment of the object key, or the
    #: object's user metadata ``x-amz-meta-<tenant_metadata_key>``.
    tenant_source: Literal["default", "key_prefix", "metadata"] = "default"
    tenant_metadata_key: str = Field(default="tenant", pattern=r"^[a-z0-9-]{1,64}$")
    default_tenant: str = Field(default="default", min_length=1, max_length=128)
    #: How long a worker owns a key while it indexes it (the Lambda timeout); a crashed worker's claim
    #: expires after it.
    lease_s: float = Field(default=900.0, gt=0)
    #: An invocation starts another part of a large object only if, after twice its slowest part so far, at
    #: least this much of its time would be left (the last part's sweep, flush and registry writes); otherwise
    #: it records its progress and hands the rest to a fresh invocation through the queue.
    continue_margin_s: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> IngestionSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("ingestion.chunk_overlap must be smaller than ingestion.chunk_size")
        return self


class CacheSettings(_Model):
    """Work the query path does not repeat (``shardrag.caching``)."""

    #: Query vectors each container keeps (LRU, keyed by the model and the normalised question); 0: none.
    query_embeddings: int = Field(default=1024, ge=0, le=1_000_000)
    #: The answer cache: off by default. On, a repeated query of an unchanged index is answered from it (in
    #: memory locally, in the DynamoDB table the CDK app then creates when deployed).
    answers: bool = False
    #: How long a cached answer is served at most (the index version already ends it at the next change).
    answer_ttl_s: int = Field(default=3600, ge=1, le=30 * 86_400)
    #: Answers kept in memory (the local runtime; each query worker process keeps its own).
    answer_max_entries: int = Field(default=1024, ge=1, le=1_000_000)


class TenancySettings(_Model):
    """Who may see which chunks. ``multi``: every query is scoped to the caller's tenant, which the API front
    takes from the caller's identity (a Cognito claim; the local API's ``X-ShardRAG-Tenant`` header stands in
    for it) and never from the request body; a query without a tenant is refused (403)."""

    mode: Literal["single", "multi"] = "single"
    #: Cognito user-pool claim that holds the caller's tenant (deployed ``auth: cognito``).
    claim: str = Field(default="custom:tenant", min_length=1, max_length=128)
    #: IAM principal tag that holds the caller's tenant (deployed ``auth: iam``, where the front can read it).
    principal_tag: str = Field(default="tenant", min_length=1, max_length=128)


#: What a tenant id may look like (S3 key prefix segment, Milvus partition-key value).
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Settings(_Model):
    environment: str = "local"
    data_dir: str = ".shardrag"
    store: StoreSettings = StoreSettings()
    routing: RoutingSettings = RoutingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    generator: GeneratorSettings = GeneratorSettings()
    ingestion: IngestionSettings = IngestionSettings()
    tenancy: TenancySettings = TenancySettings()
    rerank: RerankSettings = RerankSettings()
    cache: CacheSettings = CacheSettings()

    @model_validator(mode="after")
    def _tenants_come_from_the_objects(self) -> Settings:
        if self.tenancy.mode == "multi" and self.ingestion.tenant_source == "default":
            # Every document would be filed under one tenant that no caller can be scoped to: refuse at start.
            raise ValueError(
                "tenancy.mode 'multi' needs ingestion.tenant_source 'key_prefix' or 'metadata' (with 'default', "
                "every document would be filed under one shared tenant)"
            )
        return self

    @model_validator(mode="after")
    def _probes_within_shards(self) -> Settings:
        probe = self.routing.centroid.default_probe
        if probe is not None and probe > self.store.shard_count:
            raise ValueError(
                f"routing.centroid.default_probe {probe} exceeds store.shard_count {self.store.shard_count}"
            )
        return self

    def shard_endpoints(self) -> tuple[ShardEndpoint, ...]:
        return self.store.endpoints(Path(self.data_dir))

    def to_env_json(self) -> str:
        return self.model_dump_json(exclude_defaults=True)


def parse_settings(raw: dict[str, Any] | str) -> Settings:
    """Validate settings from a mapping or JSON; raise :class:`ConfigurationError` saying what is wrong."""
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        return Settings.model_validate(data)
    except (ValidationError, ValueError) as exc:
        raise ConfigurationError(f"invalid ShardRAG settings: {exc}") from None


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Settings from ``SHARDRAG_SETTINGS`` (JSON) or ``SHARDRAG_SETTINGS_FILE``, else defaults.

    ``SHARDRAG_MODEL_DIR`` and ``SHARDRAG_DATA_DIR`` override the matching fields.
    """
    source = os.environ if environ is None else environ
    if raw := source.get(env.SETTINGS_JSON):
        data: dict[str, Any] = json.loads(raw)
    elif path := source.get(env.SETTINGS_FILE):
        data = json.loads(Path(path).read_text())
    else:
        data = {}
    if model_dir := source.get(env.MODEL_DIR):
        data.setdefault("embedding", {})["model_dir"] = model_dir
    if data_dir := source.get(env.DATA_DIR):
        data["data_dir"] = data_dir
    return parse_settings(data)


@lru_cache(maxsize=1)
def cached_settings() -> Settings:
    """Settings for this process, parsed once (handlers call this at cold start)."""
    return load_settings()
