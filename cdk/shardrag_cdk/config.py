"""Per-environment configuration: ``cdk.json`` context ``environments.<name>``, validated into one model.

An environment holds the runtime :class:`shardrag.config.Settings` (the very model the handlers and the local
runtime parse, so a deployed function cannot receive settings the runtime would reject) and the
deployment-only values in :class:`DeploymentConfig`. Anything invalid stops synthesis with
:class:`DeploymentConfigError`, whose message names the environment and the offending field.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from shardrag.config import Settings

from shardrag_cdk.api_mapping import CLAIM_PATTERN
from shardrag_cdk.capacity import DEFAULT_P99_MS, QUERY_FUNCTIONS, demands
from shardrag_cdk.layout import FUNCTION_NAMES, FunctionName
from shardrag_cdk.store_config import (
    DistributedStoreConfig,
    ExternalStoreConfig,
    NetworkConfig,
    StandaloneStoreConfig,
    StoreConfig,
)

#: CloudWatch Logs accepts only these retention periods (days).
LogRetentionDays = Literal[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653
]

#: Lambda keeps this many concurrent executions of an account unreserved ("UnreservedConcurrentExecution below its
#: minimum value of 100" otherwise): reserved concurrency of all functions must leave them free.
UNRESERVED_MINIMUM = 100
#: SQS caps a visibility timeout at 12 hours.
_MAX_VISIBILITY_S = 12 * 3600
#: A Cognito custom attribute's claim (Cognito caps custom attribute names at 20 characters).
_CUSTOM_ATTRIBUTE = r"custom:([A-Za-z0-9_-]{1,20})"


class DeploymentConfigError(Exception):
    """The environment configuration cannot be deployed; the message says why and where."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FunctionConfig(_Model):
    """Sizing of one Lambda function."""

    memory_mb: int = Field(default=1024, ge=128, le=10240)
    timeout_s: int = Field(default=10, ge=1, le=900)
    #: None leaves the function in the account's unreserved pool.
    reserved_concurrency: int | None = Field(default=None, ge=1)
    #: Pre-initialised environments behind the ``live`` alias (0: none, cold starts possible).
    provisioned_concurrency: int = Field(default=0, ge=0)
    #: p99 duration (ms) that sizes reserved concurrency against the API throttle (``shardrag_cdk.capacity``);
    #: None: the function's default there.
    p99_ms: int | None = Field(default=None, ge=1, le=900_000)

    @model_validator(mode="after")
    def _provisioned_within_reserved(self) -> FunctionConfig:
        if self.reserved_concurrency is not None and self.provisioned_concurrency > self.reserved_concurrency:
            raise ValueError(
                f"provisioned_concurrency ({self.provisioned_concurrency}) exceeds "
                f"reserved_concurrency ({self.reserved_concurrency})"
            )
        return self


class FunctionsConfig(_Model):
    """Sizing per function. Query-path timeouts stay within the Task timeouts of ``query.asl.json``."""

    embed: FunctionConfig = FunctionConfig(memory_mb=2048, timeout_s=15)
    route: FunctionConfig = FunctionConfig(memory_mb=512, timeout_s=10)
    shard_search: FunctionConfig = FunctionConfig(memory_mb=1024, timeout_s=10)
    #: Sized like ShardSearch: the same driver and searches (from threads, one per shard), within the Feedback
    #: Task's 10 s.
    feedback: FunctionConfig = FunctionConfig(memory_mb=1024, timeout_s=10)
    fuse_generate: FunctionConfig = FunctionConfig(memory_mb=1024, timeout_s=25)
    ingest: FunctionConfig = FunctionConfig(memory_mb=3008, timeout_s=300)
    #: The chat front streams for as long as the answer takes: within API Gateway's 15 minutes per stream.
    answer: FunctionConfig = FunctionConfig(memory_mb=1024, timeout_s=300)

    def of(self, name: FunctionName) -> FunctionConfig:
        config: FunctionConfig = getattr(self, name)
        return config


class ApiConfig(_Model):
    """The public query API."""

    #: iam: SigV4-signed requests (default); api_key: x-api-key + usage plan; cognito: a user pool's ID tokens.
    auth: Literal["iam", "api_key", "cognito"] = "iam"
    #: An existing user pool (cognito only); None: the stack creates one (admin-created users only).
    cognito_user_pool_arn: str | None = Field(
        default=None, pattern=r"^arn:aws[a-z-]*:cognito-idp:[a-z0-9-]+:\d{12}:userpool/[\w-]+$"
    )
    throttle_rate_limit: float = Field(default=50.0, gt=0, le=10_000)
    throttle_burst_limit: int = Field(default=100, ge=1, le=5_000)
    #: Requests per day per API key (api_key mode only; None: no quota).
    quota_per_day: int | None = Field(default=None, ge=1)
    #: An existing WAFv2 web ACL to associate with the stage.
    waf_web_acl_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:wafv2:")
    #: API Gateway writes execution logs through one account-wide role; turn off where it already exists.
    create_cloudwatch_role: bool = True
    stage_name: str = Field(default="v1", pattern=r"^[A-Za-z0-9_]{1,64}$")

    @model_validator(mode="after")
    def _auth_needs(self) -> ApiConfig:
        if self.auth != "cognito" and self.cognito_user_pool_arn:
            raise ValueError(f"cognito_user_pool_arn is set but auth is {self.auth!r}")
        if self.auth != "api_key" and self.quota_per_day is not None:
            raise ValueError("quota_per_day applies to auth 'api_key' only")
        return self


class AlarmConfig(_Model):
    """Alarm thresholds; every alarm evaluates ``evaluation_periods`` periods of ``period_minutes``."""

    api_p95_latency_ms: float = Field(default=8000, gt=0)
    api_5xx_rate_percent: float = Field(default=2.0, gt=0, le=100)
    workflow_failed_executions: int = Field(default=5, ge=1)
    function_error_rate_percent: float = Field(default=5.0, gt=0, le=100)
    dlq_depth: int = Field(default=1, ge=1)
    period_minutes: int = Field(default=5, ge=1, le=60)
    evaluation_periods: int = Field(default=3, ge=1, le=24)
    #: SNS topic notified on alarm and recovery (None: alarms only show on the dashboard).
    topic_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:sns:")


class IngestionConfig(_Model):
    """The S3 → SQS → ingest Lambda pipeline."""

    batch_size: int = Field(default=5, ge=1, le=10)
    max_batching_window_s: int = Field(default=0, ge=0, le=300)
    #: Receives before a message moves to the dead-letter queue.
    max_receive_count: int = Field(default=3, ge=1, le=1000)
    #: Queue visibility = factor x ingest timeout; AWS advises at least 6 for SQS event sources.
    visibility_timeout_factor: int = Field(default=6, ge=6, le=60)
    dlq_retention_days: int = Field(default=14, ge=1, le=14)


class DeploymentConfig(_Model):
    """Everything the CDK app needs beyond the runtime settings."""

    functions: FunctionsConfig = FunctionsConfig()
    api: ApiConfig = ApiConfig()
    #: Where Milvus runs (``standalone`` by default: the stack creates it).
    store: StoreConfig = StandaloneStoreConfig()
    #: The VPC shared by the store and the functions that reach it. Absent: a created VPC with the defaults for a
    #: store the stack runs, none for an ``external`` store (reached over the internet, e.g. a public Zilliz Cloud
    #: endpoint; give one for a private cluster or ``private_link_service``).
    network: NetworkConfig | None = None
    #: The account's Lambda concurrency limit in the stack's Region (1,000 unless raised through Service Quotas):
    #: synthesis refuses reserved concurrency that would not leave 100 of it unreserved.
    account_concurrency_limit: int = Field(default=1000, ge=UNRESERVED_MINIMUM + 1, le=1_000_000)
    alarms: AlarmConfig = AlarmConfig()
    ingestion: IngestionConfig = IngestionConfig()
    log_retention_days: LogRetentionDays = 30
    #: retain: buckets, table and log groups survive ``cdk destroy`` (production); destroy: they go too.
    removal_policy: Literal["retain", "destroy"] = "retain"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: ALL logs every state transition (useful in dev, costly at volume); ERROR logs failures only.
    workflow_log_level: Literal["ERROR", "ALL"] = "ERROR"
    #: Include inputs/outputs (questions, passages) in workflow logs: off by default, they are user data.
    workflow_log_execution_data: bool = False
    service_name: str = Field(default="shardrag", pattern=r"^[a-z][a-z0-9-]{0,40}$")
    metrics_namespace: str = Field(default="ShardRAG", pattern=r"^[A-Za-z][A-Za-z0-9/_.-]{0,200}$")

    @model_validator(mode="before")
    @classmethod
    def _default_network(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("network") is None:
            store = data.get("store")
            kind = store.get("kind") if isinstance(store, dict) else getattr(store, "kind", "standalone")
            if kind != "external":
                return {**data, "network": {}}
        return data

    @model_validator(mode="after")
    def _fits_the_account(self) -> DeploymentConfig:
        reserved = {n: self.functions.of(n).reserved_concurrency or 0 for n in FUNCTION_NAMES}
        available = self.account_concurrency_limit - UNRESERVED_MINIMUM
        if sum(reserved.values()) > available:
            detail = ", ".join(f"{n} {r}" for n, r in reserved.items() if r)
            raise ValueError(
                f"reserved concurrency adds up to {sum(reserved.values())} ({detail}) but an account with "
                f"account_concurrency_limit {self.account_concurrency_limit} can reserve at most {available} (Lambda "
                "keeps 100 unreserved): lower reserved_concurrency, or raise the quota in Service Quotas and set "
                "deployment.account_concurrency_limit to it"
            )
        return self

    @model_validator(mode="after")
    def _cluster_nodes_can_pull_images(self) -> DeploymentConfig:
        if isinstance(self.store, DistributedStoreConfig) and self.network is not None and not self.network.has_nat:
            raise ValueError(
                "store kind 'distributed' needs a NAT (network.nat_gateways >= 1, or imported.has_nat): the EKS nodes "
                "pull the Milvus, etcd and controller images from public registries"
            )
        return self

    @model_validator(mode="after")
    def _store_has_a_network(self) -> DeploymentConfig:
        if self.network is None and isinstance(self.store, ExternalStoreConfig) and self.store.private_link_service:
            raise ValueError("store.private_link_service needs deployment.network (the endpoint lives in the VPC)")
        return self

    @model_validator(mode="after")
    def _queue_can_hold_ingest(self) -> DeploymentConfig:
        visibility = self.functions.ingest.timeout_s * self.ingestion.visibility_timeout_factor
        if visibility > _MAX_VISIBILITY_S:
            raise ValueError(
                f"ingest timeout {self.functions.ingest.timeout_s}s x visibility_timeout_factor "
                f"{self.ingestion.visibility_timeout_factor} = {visibility}s exceeds SQS's 12 h maximum"
            )
        return self


class EnvironmentConfig(_Model):
    """One deployable environment."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,20}$")
    account: str | None = Field(default=None, pattern=r"^\d{12}$")
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    settings: Settings
    deployment: DeploymentConfig = DeploymentConfig()

    @model_validator(mode="after")
    def _deployable(self) -> EnvironmentConfig:
        store, deployed = self.settings.store, self.deployment.store
        if store.shards or store.endpoint is not None:
            raise ValueError(
                "settings.store.shards / store.endpoint are produced by the stack from deployment.store (kind "
                f"{deployed.kind!r}); remove it (for an existing cluster use kind 'external' and its endpoints)"
            )
        if isinstance(deployed, ExternalStoreConfig) and len(deployed.endpoints) not in (1, store.shard_count):
            raise ValueError(
                f"deployment.store.endpoints lists {len(deployed.endpoints)} endpoints: give one (every shard a "
                f"collection on it) or one per shard ({store.shard_count})"
            )
        generator = self.settings.generator
        if generator.kind == "openai" and not generator.endpoint_url:
            raise ValueError("settings.generator.kind 'openai' needs settings.generator.endpoint_url")
        self._tenancy_deployable()
        self._rerank_fits()
        self._throttle_within_reserved_concurrency()
        return self

    def _throttle_within_reserved_concurrency(self) -> None:
        """The stage must shed (429, before an execution starts) before any query function throttles."""
        api, functions = self.deployment.api, self.deployment.functions
        short = [
            d
            for d in demands(
                rate=api.throttle_rate_limit,
                burst=api.throttle_burst_limit,
                shard_count=self.settings.store.shard_count,
                p99_ms={f: functions.of(f).p99_ms or DEFAULT_P99_MS[f] for f in QUERY_FUNCTIONS},
                reserved={f: functions.of(f).reserved_concurrency for f in QUERY_FUNCTIONS},
            )
            if not d.fits
        ]
        if short:
            detail = "; ".join(
                f"{d.function}: {d.parallel} x ({api.throttle_burst_limit} + {api.throttle_rate_limit:g}/s x "
                f"{functions.of(d.function).p99_ms or DEFAULT_P99_MS[d.function]} ms) = {d.needed} > "
                f"reserved_concurrency {d.reserved}"
                for d in short
            )
            raise ValueError(
                "deployment.api throttle admits more than the query functions' reserved concurrency can run "
                f"(parallel x (burst + rate x p99) must not exceed it; see shardrag_cdk.capacity): {detail}"
            )

    def _rerank_fits(self) -> None:
        """A failed rerank falls back to the fused order, but only if it fails while FuseAndGenerate still runs."""
        rerank, function = self.settings.rerank, self.deployment.functions.fuse_generate
        if rerank.kind != "none" and rerank.timeout_s >= function.timeout_s:
            raise ValueError(
                f"settings.rerank.timeout_s ({rerank.timeout_s:g}s) must be below "
                f"deployment.functions.fuse_generate.timeout_s ({function.timeout_s}s): FuseAndGenerate would time "
                "out before a slow rerank fails over to the fused order, and there would be no time left to generate"
            )

    def _tenancy_deployable(self) -> None:
        """Multi-tenant mode needs a tenant the API can read from the caller's verified identity."""
        tenancy, api = self.settings.tenancy, self.deployment.api
        if tenancy.mode == "single":
            return
        if api.auth == "iam":
            raise ValueError(
                "settings.tenancy.mode 'multi' needs deployment.api.auth 'cognito': API Gateway does not expose "
                "an IAM caller's principal tags to the integration ($context.identity has its ARN and account, "
                "not its tags), so the tenant could not come from the caller's identity"
            )
        if api.auth == "api_key":
            raise ValueError(
                "settings.tenancy.mode 'multi' needs deployment.api.auth 'cognito': an API key identifies a "
                "client for throttling and quotas, not a tenant (AWS advises against API keys for authorization)"
            )
        if not re.fullmatch(CLAIM_PATTERN, tenancy.claim):
            raise ValueError(f"settings.tenancy.claim {tenancy.claim!r} must match {CLAIM_PATTERN}")
        if api.cognito_user_pool_arn is None and not re.fullmatch(_CUSTOM_ATTRIBUTE, tenancy.claim):
            raise ValueError(
                f"settings.tenancy.claim {tenancy.claim!r}: the user pool this stack creates holds the tenant in "
                "a custom attribute, so the claim must be 'custom:<name>' (name: 1-20 letters, digits, _ or -)"
            )

    @property
    def stack_name(self) -> str:
        return f"ShardRag-{self.name}"

    def tenant_attribute(self) -> str | None:
        """The custom attribute (without ``custom:``) the stack's own user pool declares for the tenant.

        None in single-tenant mode, and with an existing pool (``cognito_user_pool_arn``), which the stack does not
        manage: that pool must already issue the configured claim.
        """
        api = self.deployment.api
        match = re.fullmatch(_CUSTOM_ATTRIBUTE, self.settings.tenancy.claim)
        if self.settings.tenancy.mode == "single" or api.auth != "cognito" or api.cognito_user_pool_arn or not match:
            return None
        return match[1]

    def external_secret_names(self) -> tuple[str, ...]:
        """Secrets Manager names of an ``external`` store's tokens and CA certificates, deduplicated, in order."""
        store = self.deployment.store
        if not isinstance(store, ExternalStoreConfig):
            return ()
        names = [n for e in store.endpoints for n in (e.token_secret, e.ca_secret) if n]
        return tuple(dict.fromkeys(names))


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in item["loc"]) or "(environment)"
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def load_environment(environments: Any, name: str | None) -> EnvironmentConfig:
    """Validate ``cdk.json`` context ``environments[name]``.

    Raises :class:`DeploymentConfigError` when the name is missing or unknown, or the values are invalid.
    """
    if not isinstance(environments, dict) or not environments:
        raise DeploymentConfigError("cdk.json context has no 'environments' mapping (e.g. {'dev': {...}})")
    known = ", ".join(sorted(environments))
    if not name:
        raise DeploymentConfigError(f"choose an environment with -c env=<name> (known: {known})")
    if name not in environments:
        raise DeploymentConfigError(f"unknown environment {name!r} (known: {known})")
    raw = environments[name]
    if not isinstance(raw, dict):
        raise DeploymentConfigError(f"environments.{name} must be an object, not {type(raw).__name__}")
    settings = dict(raw.get("settings") or {})
    # The runtime reports which environment it serves; the environment's name is the default.
    settings.setdefault("environment", name)
    try:
        return EnvironmentConfig.model_validate({**raw, "name": name, "settings": settings})
    except ValidationError as exc:
        raise DeploymentConfigError(f"invalid configuration for environment {name!r}:\n{_describe(exc)}") from None
