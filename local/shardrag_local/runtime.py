"""The local runtime: one process hosting the AWS emulation, the handlers and the HTTP API, with each Milvus Lite
shard served by a process of its own (``shardrag_local.shard_servers``)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardrag import env, services
from shardrag.api_contract import map_execution
from shardrag.config import Settings, cached_settings

from shardrag_local.emulator import Endpoint, LocalAws
from shardrag_local.ingestion import LocalIngestion
from shardrag_local.query_workers import QueryWorkers
from shardrag_local.shard_servers import ShardServers

if TYPE_CHECKING:
    from shardrag.chat.service import ChatService

log = logging.getLogger("shardrag.local")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_CORPUS = PROJECT_ROOT / "sample_corpus"
DOCUMENTS_BUCKET = "shardrag-documents"
_SAMPLE_MARKER = "sample-corpus.indexed"


def configure_process_environment() -> None:
    """Environment the handlers would get from the CDK app, set before any handler module is imported."""
    defaults = {
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_SERVICE_NAME": "shardrag-local",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Powertools warns on every invocation that publishes no metric; locally metrics are off anyway.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    for noisy in ("pymilvus", "milvus_lite", "grpc"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)


class LocalRuntime:
    """Everything ``make dev`` serves, also used in process by the integration tests."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        aws_endpoint: Endpoint | None = None,
        serve_aws: bool = True,
        query_workers: int = 0,
    ) -> None:
        """``query_workers``: processes that run query executions (``shardrag_local.query_workers``); 0 runs them
        in this process, where tests can reach the handlers' objects."""
        configure_process_environment()
        self.settings = settings or cached_settings()
        self.data_dir = Path(self.settings.data_dir)
        self.aws = LocalAws(PROJECT_ROOT, aws_endpoint, serve=serve_aws)
        self.query_arn = ""
        self.ingestion = LocalIngestion(self.aws, bucket=DOCUMENTS_BUCKET)
        self._stopped = threading.Event()
        self.aws_state_dir = self.data_dir / "aws"
        self.shard_servers = ShardServers(self.settings.shard_endpoints(), self.data_dir / "logs")
        self.workers = QueryWorkers(query_workers, PROJECT_ROOT) if query_workers else None
        self._previous_settings_env: str | None = None
        self._chat: ChatService | None = None

    def start(self) -> None:
        started = time.perf_counter()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.shard_servers.start()
        self._serve_settings()
        if self.workers is not None:
            self.workers.spawn()  # they read the served settings from the environment they inherit
        self.aws.start()
        self.query_arn = self.aws.deploy_query_workflow(self.settings.store.shard_count)
        s3 = self.aws.client("s3")
        s3.create_bucket(Bucket=DOCUMENTS_BUCKET)
        # The previous run's bucket goes back before notifications exist (nothing is re-ingested), its registry
        # once the table exists.
        restored = self.aws.restore_objects(self.aws_state_dir)
        # Uploads fire S3 notifications -> SQS -> the ingest function, as in AWS.
        self.ingestion.start()
        self._create_conversations_table()
        restored_items = self.aws.restore_items(self.aws_state_dir)
        if restored or restored_items:
            log.info("restored %d objects and %d registry items from %s", restored, restored_items, self.aws_state_dir)
        stores = services.shard_stores()
        for store in stores.all():
            store.ensure_ready()
        # pymilvus sets its own loggers' levels when it is imported (lazily, just above); a stopped local shard
        # would otherwise print a full traceback per query. The handler still reports the failure by name.
        for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.decorators"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if self.workers is not None:
            self.workers.wait_ready()
        log.info("local runtime up in %.1f s", time.perf_counter() - started)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.workers is not None:
            self.workers.stop()
        self.ingestion.stop()
        self.aws.save_state(self.aws_state_dir)
        self.aws.stop()
        for store in services.shard_stores().all():
            store.close()
        # Last: ingestion has drained and every client is closed, so no write is cut off.
        self.shard_servers.stop()
        self._restore_settings_env()

    def _serve_settings(self) -> None:
        """Point the handlers at the shard servers, the way a deployed function learns its Milvus endpoints: in
        its settings (``SHARDRAG_SETTINGS``), read at cold start."""
        served = self.settings.model_copy(
            update={"store": self.settings.store.model_copy(update={"shards": self.shard_servers.served_endpoints()})}
        )
        self._previous_settings_env = os.environ.get(env.SETTINGS_JSON)
        os.environ[env.SETTINGS_JSON] = served.model_dump_json()
        services.reset_caches()

    def _restore_settings_env(self) -> None:
        if self._previous_settings_env is None:
            os.environ.pop(env.SETTINGS_JSON, None)
        else:
            os.environ[env.SETTINGS_JSON] = self._previous_settings_env
        services.reset_caches()

    # -- the query path ------------------------------------------------------------------------------
    def execute(self, body: dict[str, Any], *, tenant: str = "") -> tuple[int, dict[str, Any]]:
        """Run the query state machine synchronously and map the result like API Gateway does.

        The execution input has the deployed shape: the body as the request, the caller's tenant beside it
        (API Gateway takes it from the caller's identity; locally the API server passes what stands in for it).
        """
        execution_input = {"request": body, "caller": {"tenant": tenant}}
        if self.workers is not None:
            return self.workers.execute(execution_input)
        result = self.aws.start_sync_execution(self.query_arn, json.dumps(execution_input), name=uuid.uuid4().hex)
        return map_execution(result)

    # -- chat ------------------------------------------------------------------------------------------
    def _create_conversations_table(self) -> None:
        from shardrag.chat.conversations import TTL_ATTRIBUTE, table_definition

        ddb = self.aws.client("dynamodb")
        table = services.conversations_table()
        if table not in ddb.list_tables()["TableNames"]:
            ddb.create_table(**table_definition(table))
            ddb.update_time_to_live(
                TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
            )

    def chat_service(self) -> ChatService:
        """The chat service of this runtime: retrieval through :meth:`execute` (the same workflow, workers and
        status mapping as ``POST /query``), conversations in the emulated DynamoDB."""
        if self._chat is None:
            self._chat = services.build_chat_service(
                lambda body, tenant: self.execute(body, tenant=tenant),
                settings=self.settings,
                dynamodb_client=self.aws.client("dynamodb"),
            )
        return self._chat

    def presigned_upload(self, key: str, *, expires_s: int = 900) -> str:
        """A presigned PUT of ``key`` into the documents bucket, reachable by a browser through the served AWS
        endpoint (the page uploads there directly, as it would to S3)."""
        import boto3
        from botocore.config import Config

        s3 = boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url=self.aws.endpoint.url,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        return str(
            s3.generate_presigned_url(
                "put_object", Params={"Bucket": DOCUMENTS_BUCKET, "Key": key}, ExpiresIn=expires_s, HttpMethod="PUT"
            )
        )

    def upload_status(self, key: str) -> dict[str, Any]:
        state = self.ingestion.registry.get_source(f"{DOCUMENTS_BUCKET}/{key}")
        if state is None:
            return {"key": key, "status": "pending"}
        return {
            "key": key,
            "status": state.status,
            "chunks": state.chunk_count,
            "reason": state.reason,
            "error": state.error,
        }

    # -- shards (local operations) -------------------------------------------------------------------
    def stop_shard(self, shard: int) -> None:
        """Stop one embedded shard's server process: searches of that shard fail until it is started."""
        self.shard_servers.stop_shard(shard)

    def start_shard(self, shard: int, timeout_s: float = 30.0) -> None:
        self.shard_servers.start_shard(shard)
        store = services.shard_stores()(shard)
        reset = getattr(getattr(store, "inner", store), "reset", None)
        deadline = time.monotonic() + timeout_s
        while True:
            if reset is not None:
                reset()
            try:
                store.ensure_ready()
                return
            except Exception:
                # gRPC refuses the first connection to a restarted address until its reconnect backoff (at most
                # a second, see the store) has passed: listening is not yet reachable for this process.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def shard_status(self) -> list[dict[str, Any]]:
        statuses = []
        for i, store in enumerate(services.shard_stores().all()):
            try:
                statuses.append({"shard": i, "status": "up", "chunks": store.count()})
            except Exception as exc:  # a stopped shard reports why, the others still answer
                statuses.append({"shard": i, "status": "down", "error": type(exc).__name__})
        return statuses

    def rebuild_term_stats(self) -> dict[str, Any]:
        """Recount the BM25 term statistics from what the shards store (``shardrag stats --rebuild``)."""
        from shardrag.term_stats import rebuild_term_stats

        counted = rebuild_term_stats(
            services.shard_stores(),
            services.term_stats_store(),
            per_tenant=services.stats_per_tenant(),
            journal=services.stats_journal(),
        )
        services.corpus_stats.cache_clear()
        return {"chunks_per_shard": {str(k): v for k, v in counted.items()}}

    # -- centroid routing ----------------------------------------------------------------------------
    def rebalance(self) -> dict[str, Any]:
        """Retrain the routing centroids and move the chunks (``shardrag.rebalance``). Without query workers every
        router and writer lives in this process and re-reads the artefact right after the swap, so there is no
        grace period to wait; with them, routers in other processes pick it up within ``refresh_s``, as deployed."""
        from shardrag.errors import BadRequest
        from shardrag.rebalance import Rebalancer

        if self.settings.routing.mode != "centroid":
            raise BadRequest("rebalance needs routing.mode centroid (hash placement has nothing to rebalance)")
        cache = services.centroid_cache()
        report = Rebalancer(
            stores=services.shard_stores(),
            shard_count=self.settings.store.shard_count,
            centroids=cache.store,
            settings=self.settings.routing.centroid,
            registry=self.ingestion.registry,
            on_swap=lambda _: cache.invalidate(),
            on_change=services.index_changed,
        ).run(grace_s=0 if self.workers is None else self.settings.routing.centroid.refresh_s)
        return report.model_dump()

    # -- sample corpus -------------------------------------------------------------------------------
    def index_paths(self, paths: list[Path], *, prefix: str = "", timeout_s: float = 600.0) -> int:
        """Upload files to the documents bucket and wait until the S3 event path has indexed them; returns the
        number of chunks the registry records for them."""
        s3 = self.aws.client("s3")
        keys = []
        for path in paths:
            key = prefix + path.name
            s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=key, Body=path.read_bytes())
            keys.append(key)
        if not self.ingestion.wait_idle(timeout_s):
            raise TimeoutError(f"ingestion did not finish within {timeout_s:.0f} s")
        registry = self.ingestion.registry
        states = [registry.get_source(f"{DOCUMENTS_BUCKET}/{key}") for key in keys]
        return sum(state.chunk_count for state in states if state is not None)

    def ensure_sample_corpus(self) -> int:
        marker = self.data_dir / _SAMPLE_MARKER
        if marker.exists():
            return 0
        paths = sorted(p for p in SAMPLE_CORPUS.iterdir() if p.suffix in {".md", ".txt"})
        chunks = self.index_paths(paths, prefix="sample/")
        marker.write_text(json.dumps({"documents": len(paths), "chunks": chunks}))
        return chunks
