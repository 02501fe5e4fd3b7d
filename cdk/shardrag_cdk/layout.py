"""Where the Lambda code and layers come from, and which function gets which layer.

Pure Python (no CDK import) so that the asset build script and the package-size check share it with the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

ROOT: Final = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR: Final = ROOT / "functions"
CORE_LAYER_DIR: Final = ROOT / "layers" / "core"
STATE_MACHINE_FILE: Final = ROOT / "statemachines" / "query.asl.json"
REQUIREMENTS_DIR: Final = ROOT / "cdk" / "lambda_layers"
BUILD_DIR: Final = ROOT / "build" / "lambda"
#: ``make model`` writes the ONNX export here; the build script stages it as ``build/lambda/model/model/``.
MODEL_SOURCE_DIR: Final = ROOT / "build" / "model"
MODEL_FILES: Final = ("model.onnx", "tokenizer.json")
#: Where Lambda mounts the model layer (a layer's ``model/`` folder lands in ``/opt/model``).
MODEL_MOUNT: Final = "/opt/model"

#: Lambda's limit on a function's code plus all its layers, unzipped.
LAMBDA_UNZIPPED_LIMIT_BYTES: Final = 250 * 1024 * 1024
#: What every function keeps free under that limit, so that a dependency upgrade or a new module still fits.
HEADROOM_BYTES: Final = 20 * 1024 * 1024
#: Lambda allows at most five layers per function.
MAX_LAYERS: Final = 5

FunctionName = Literal["embed", "route", "shard_search", "feedback", "fuse_generate", "ingest", "answer"]
LayerName = Literal["core", "base", "onnx", "milvus", "model"]

#: The query workflow's functions, in the order an execution runs them (Feedback: hybrid queries only).
QUERY_FUNCTION_NAMES: Final[tuple[FunctionName, ...]] = ("embed", "route", "shard_search", "feedback", "fuse_generate")
FUNCTION_NAMES: Final[tuple[FunctionName, ...]] = (*QUERY_FUNCTION_NAMES, "ingest", "answer")
#: The functions that talk to Milvus: they carry the ``milvus`` layer, may read the store's secrets (token, CA
#: certificate) and are placed in the store's VPC. Feedback reads opening-chunk vectors and searches every shard
#: again, so it needs exactly what ShardSearch needs.
STORE_FUNCTIONS: Final[tuple[FunctionName, ...]] = ("shard_search", "feedback", "ingest")

#: The AWS APIs each function calls through boto3 (the core library's clients; a test checks this table against
#: every ``boto3.client(...)`` in the code). The VPC endpoints and the botocore service models the base layer
#: keeps are both derived from it, so a new client without an entry here fails a test, not a deployment.
FUNCTION_AWS_SERVICES: Final[dict[FunctionName, tuple[str, ...]]] = {
    # DynamoDB: the answer cache's table where ``cache.answers`` is on (Embed looks up, FuseAndGenerate stores).
    "embed": ("s3", "dynamodb"),
    "route": ("s3",),
    "shard_search": ("secretsmanager",),
    # The Milvus token and CA certificate, like ShardSearch.
    "feedback": ("secretsmanager",),
    "fuse_generate": ("bedrock-runtime", "bedrock-agent-runtime", "secretsmanager", "dynamodb"),
    # SQS: the rest of a large object is handed to a fresh invocation through the ingest queue.
    "ingest": ("s3", "dynamodb", "secretsmanager", "sqs"),
    # The chat front: StartSyncExecution for retrieval, conversations and the registry in DynamoDB, presigned
    # uploads into S3, the generator (streamed) and its API key secret.
    "answer": ("stepfunctions", "dynamodb", "s3", "bedrock-runtime", "secretsmanager"),
}
#: Services a VPC reaches through a (free) gateway endpoint; every other one needs an interface endpoint or a NAT.
GATEWAY_ENDPOINT_SERVICES: Final = frozenset({"s3", "dynamodb"})


def vpc_endpoint_services(functions: tuple[FunctionName, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(gateway, interface) endpoint services that ``functions``, placed in a VPC without a NAT, need.

    S3 and DynamoDB gateway endpoints are always listed: they cost nothing, and the Milvus host uses S3 too.
    """
    called = sorted({service for f in functions for service in FUNCTION_AWS_SERVICES[f]})
    interface = tuple(s for s in called if s not in GATEWAY_ENDPOINT_SERVICES)
    return tuple(sorted(GATEWAY_ENDPOINT_SERVICES)), interface


#: Which layers each function needs. numpy and boto3 sit in ``base`` (every function needs them) so that no
#: distribution is shipped twice to one function.
FUNCTION_LAYERS: Final[dict[FunctionName, tuple[LayerName, ...]]] = {
    "embed": ("core", "base", "onnx", "model"),
    "route": ("core", "base"),
    "shard_search": ("core", "base", "milvus"),
    "feedback": ("core", "base", "milvus"),
    "fuse_generate": ("core", "base"),
    "ingest": ("core", "base", "onnx", "milvus"),
    "answer": ("core", "base"),
}
#: Functions that download the model from S3 at cold start instead of carrying the model layer: onnxruntime,
#: pymilvus (and the pandas it imports) and the 87 MB model left ingest 3 MB under the limit.
MODEL_FROM_S3: Final[tuple[FunctionName, ...]] = ("ingest",)
#: The ``base`` layer keeps botocore's service models for these APIs only (the 400-odd others are 26 MB).
BOTOCORE_SERVICES: Final = tuple(sorted({s for services in FUNCTION_AWS_SERVICES.values() for s in services}))

#: Distributions that must never reach a Lambda package (too big, or local-only engines).
FORBIDDEN_DISTRIBUTIONS: Final = frozenset(
    {"torch", "sentence-transformers", "milvus-lite", "transformers", "triton", "sympy", "huggingface-hub"}
)


@dataclass(frozen=True)
class PipLayer:
    """A dependency layer built by ``pip install -t`` from requirement lists under ``cdk/lambda_layers``."""

    name: LayerName
    #: Layers whose distributions this one must not repeat (removed after install).
    provided_by: tuple[LayerName, ...] = ()
    #: Paths (globs relative to ``python/``) never imported at runtime, dropped to fit the size limit.
    drop: tuple[str, ...] = ()
    #: Modules each function using the layer imports: the build script's smoke test imports them.
    imports: tuple[str, ...] = ()
    #: (folder, names): inside that folder (relative to ``python/``) only the named subfolders are kept.
    keep_only: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def requirements(self) -> Path:
        return REQUIREMENTS_DIR / f"{self.name}.txt"

    @property
    def requirements_nodeps(self) -> Path:
        return REQUIREMENTS_DIR / f"{self.name}.nodeps.txt"


PIP_LAYERS: Final[tuple[PipLayer, ...]] = (
    PipLayer(
        "base",
        drop=("numpy/_core/include",),
        imports=(
            "aws_lambda_powertools",
            "aws_lambda_powertools.metrics",
            "pydantic",
            "numpy",
            "pypdf",
            "Stemmer",
            "boto3",
        ),
        # The functions ship the boto3 the tests ran with (S3 conditional writes and bedrock-agent-runtime Rerank
        # are recent), not whatever the Lambda runtime bundles; only the service models they call are kept.
        keep_only=(("botocore/data", BOTOCORE_SERVICES),),
    ),
    PipLayer(
        "onnx",
        provided_by=("base",),
        # libonnxruntime.so is the C API for native embedders: the Python binding links the runtime in
        # statically and never loads it (checked: same embeddings with it removed). 35 MB: without this
        # drop, ingest (onnx + milvus + model) exceeds Lambda's 250 MB.
        drop=(
            "onnxruntime/capi/libonnxruntime.so*",
            "onnxruntime/transformers",
            "onnxruntime/tools",
            "onnxruntime/quantization",
            "onnxruntime/datasets",
        ),
        imports=("onnxruntime", "tokenizers"),
    ),
    PipLayer("milvus", provided_by=("base",), imports=("pymilvus",)),
)


def function_dir(name: FunctionName) -> Path:
    return FUNCTIONS_DIR / name


def layer_dir(name: LayerName) -> Path:
    """The asset directory of a layer (``python/…`` or ``model/…`` inside)."""
    if name == "core":
        return CORE_LAYER_DIR
    return BUILD_DIR / name


def layer_is_built(name: LayerName) -> bool:
    """A built layer has its content folder and no unfinished-build marker."""
    root = layer_dir(name)
    content = root / ("model" if name == "model" else "python")
    return content.is_dir() and any(content.iterdir()) and not (root / ".incomplete").exists()
