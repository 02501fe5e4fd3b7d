"""The local AWS: moto in process (S3, SQS, DynamoDB, IAM, Lambda, Step Functions) plus a loopback endpoint
for the AWS CLI and boto3, with Lambda invocations dispatched to the real handlers.

In-process callers (the state machine engine, the handlers) reach moto through its botocore hook without HTTP;
outside callers reach the same backends through ``ThreadedMotoServer``.
"""

from __future__ import annotations

import copy
import datetime
import functools
import io
import json
import logging
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws
from moto.core.config import default_user_config
from moto.server import ThreadedMotoServer
from shardrag.statemachine import QUERY_FUNCTIONS, render_definition, substitute

from shardrag_local.dispatch import HandlerRegistry, install, uninstall

ACCOUNT = "123456789012"
REGION = "us-east-1"
QUERY_STATE_MACHINE = "shardrag-query"
_ROLE = "shardrag-local"
log = logging.getLogger("shardrag.local")


@dataclass(frozen=True)
class Endpoint:
    host: str = "127.0.0.1"
    port: int = 4566

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _json_copy(value: Any) -> Any:
    """``copy.deepcopy`` for JSON values (what a state's input and output are), several times faster: no memo,
    no reduce protocol. Anything that is not JSON is still deep-copied the general way."""
    kind = type(value)
    if kind is dict:
        return {key: _json_copy(item) for key, item in value.items()}
    if kind is list:
        return [_json_copy(item) for item in value]
    if kind in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


class _JsonCopyModule:
    """Stands in for the ``copy`` module inside the engine modules that copy state data."""

    deepcopy = staticmethod(_json_copy)
    copy = staticmethod(copy.copy)


#: Engine modules whose ``copy.deepcopy`` calls copy state data (inputs, outputs, the evaluation stack).
_STATE_DATA_MODULES = (
    "moto.stepfunctions.parser.asl.eval.states",
    "moto.stepfunctions.parser.asl.component.common.string.string_expression",
    "moto.stepfunctions.parser.asl.component.common.path.result_path",
    "moto.stepfunctions.parser.asl.component.state.exec.state_parallel.state_parallel",
    "moto.stepfunctions.parser.asl.component.state.exec.execute_state",
    "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service",
)


def _history_without_data() -> None:
    """Every state's entered and exited history events carry a JSON copy of its input (a deep copy, then a
    serialisation: a sixth of an execution's CPU, the query's vector and hits included). An EXPRESS execution has
    no history to read back (``GetExecutionHistory`` is for STANDARD workflows), so the events keep their names and
    lose the data. The size quota on state data is checked elsewhere and still applies."""
    from moto.stepfunctions.parser.api import HistoryEventExecutionDataDetails
    from moto.stepfunctions.parser.asl.component.state.state import CommonStateField

    if getattr(CommonStateField._get_state_entered_event_details, "_shardrag_light", False):
        return

    def entered(self: Any, env: Any) -> Any:
        return {"name": self.name, "input": "{}", "inputDetails": HistoryEventExecutionDataDetails(truncated=False)}

    def exited(self: Any, env: Any) -> Any:
        # The original (moto 5.2.5) minus the serialised output: the variable tracing it resets still is.
        details: dict[str, Any] = {
            "name": self.name,
            "output": "{}",
            "outputDetails": HistoryEventExecutionDataDetails(truncated=False),
        }
        assigned = env.variable_store.get_assigned_variables()
        env.variable_store.reset_tracing()
        if assigned:
            details["assignedVariables"] = assigned
            details["assignedVariablesDetails"] = {"truncated": False}
        return details

    entered._shardrag_light = True  # type: ignore[attr-defined]
    CommonStateField._get_state_entered_event_details = entered  # type: ignore[method-assign]
    CommonStateField._get_state_exited_event_details = exited  # type: ignore[method-assign]


def _speed_up_engine() -> None:
    """Costs of moto's Step Functions engine that a long-running local runtime need not pay per execution:
    re-parsing the same definition (the parsed program is immutable; evaluation state lives in the
    ``Environment``), re-parsing every JSONPath it evaluates (jsonpath_ng builds a whole LALR parser for each
    ``parse``: a third of the engine's CPU under load, measured with py-spy; a parsed path is an immutable tree),
    deep-copying state data with the general ``copy.deepcopy`` (the next third: the query's vectors and hits are
    copied at every state) and building a boto3 client for every Lambda task. All are wrapped, not forked."""
    import importlib

    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.utils import json_path

    _history_without_data()
    for name in _STATE_DATA_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "copy", None) is copy:
            module.copy = _JsonCopyModule  # type: ignore[attr-defined]
    if not getattr(json_path.parse, "_shardrag_cached", False):  # type: ignore[attr-defined]
        parse_path = functools.lru_cache(maxsize=1024)(json_path.parse)  # type: ignore[attr-defined]
        parse_path._shardrag_cached = True  # type: ignore[attr-defined]
        json_path.parse = parse_path  # type: ignore[attr-defined]

    if not getattr(AmazonStateLanguageParser.parse, "_shardrag_cached", False):
        parse = functools.lru_cache(maxsize=32)(AmazonStateLanguageParser.parse)
        parse._shardrag_cached = True  # type: ignore[attr-defined]
        AmazonStateLanguageParser.parse = parse  # type: ignore[method-assign]
    if not getattr(lambda_eval_utils.boto_client_for, "_shardrag_cached", False):  # type: ignore[attr-defined]
        make_client = lambda_eval_utils.boto_client_for  # type: ignore[attr-defined]

        @functools.lru_cache(maxsize=16)
        def cached_client(region: str, service: str, state_credentials: Any = None) -> Any:
            return make_client(region=region, service=service, state_credentials=None)

        def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
            return cached_client(region, service)

        boto_client_for._shardrag_cached = True  # type: ignore[attr-defined]
        lambda_eval_utils.boto_client_for = boto_client_for  # type: ignore[attr-defined]


def _untracked_models() -> None:
    """moto appends every model instance it ever creates (each DynamoDB item written, each SQS message, each S3
    object version) to a class-level list, for its dashboard and for a test's reset; nothing frees them. A
    long-running local runtime must not keep every registry record and queue message it ever wrote: indexing
    SciFact grew the process by ~30 MB/s to 17 GB before this. Instances are created as before, only not listed."""
    from moto.core.common_models import BaseModel

    if getattr(BaseModel.__new__, "_shardrag_untracked", False):
        return

    def untracked_new(cls: type, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls)

    untracked_new._shardrag_untracked = True  # type: ignore[attr-defined]
    BaseModel.__new__ = untracked_new  # type: ignore[method-assign]


class _TableKeepingCopy:
    """Stands in for ``copy`` in moto's DynamoDB backend: a table is "copied" as itself (see
    :func:`_transactions_back_up_items`); anything else is deep-copied as before."""

    copy = staticmethod(copy.copy)

    @staticmethod
    def deepcopy(value: Any, memo: Any = None) -> Any:
        from moto.dynamodb.models.table import Table

        return value if isinstance(value, Table) else copy.deepcopy(value, memo)


def _transactions_back_up_items() -> None:
    """moto backs up every table a ``TransactWriteItems`` touches, whole, with ``copy.deepcopy`` before it
    starts, so that it can roll back: O(table) CPU per transaction (and, with instance tracking, memory that is
    never freed). The document registry writes every record through a fenced transaction, so ingesting a corpus
    was quadratic. Here the transaction backs up only the items it names (at most 100, each named once: moto
    and DynamoDB refuse two operations on one item) and puts exactly those back when it fails; moto's own
    rollback becomes a no-op because its table "copy" is the table itself."""
    import moto.dynamodb.models as dynamodb_models
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType

    original = DynamoDBBackend.transact_write_items
    if getattr(original, "_shardrag_light", False):
        return

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved: list[tuple[Any, Any, Any, Any]] = []
        for entry in transact_items:
            operation: Any = next(iter(entry.values()), {})
            table = self.tables.get(operation.get("TableName")) if isinstance(operation, dict) else None
            key = operation.get("Item", operation.get("Key")) if table is not None else None
            if table is None or not isinstance(key, dict) or table.hash_key_attr not in key:
                continue  # moto rejects it before changing anything
            hash_value = DynamoType(key[table.hash_key_attr])
            range_value = None
            if table.range_key_attr is not None:
                if table.range_key_attr not in key:
                    continue
                range_value = DynamoType(key[table.range_key_attr])
            saved.append((table, hash_value, range_value, copy.deepcopy(table.get_item(hash_value, range_value))))
        try:
            original(self, transact_items)
        except Exception:
            for table, hash_value, range_value, item in saved:
                _restore_item(table, hash_value, range_value, item)
            raise

    transact_write_items._shardrag_light = True  # type: ignore[attr-defined]
    dynamodb_models.copy = _TableKeepingCopy  # type: ignore[attr-defined,assignment]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _restore_item(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    """Put back what a failed transaction found under one key (``None``: nothing was there)."""
    if range_value is None:
        if item is None:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = item
    elif item is None:
        if hash_value in table.items:
            table.items[hash_value].pop(range_value, None)
    else:
        table.items[hash_value][range_value] = item


def _prune_finished_threads() -> None:
    """The engine appends every worker thread it starts to a module-level list and never removes them; in a
    long-running local API that is a leak of several thread objects per query."""
    from moto.stepfunctions.parser.utils import TMP_THREADS

    TMP_THREADS[:] = [t for t in TMP_THREADS if t.is_alive()]


def _placeholder_zip() -> bytes:
    """Lambda's CreateFunction needs a package; the code that runs is loaded from ``functions/`` instead."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "# dispatched in process by shardrag_local.dispatch\n")
    return buffer.getvalue()


class LocalAws:
    """Starts the emulation, deploys the query workflow from ``statemachines/`` and runs executions."""

    def __init__(self, project_root: Path, endpoint: Endpoint | None = None, *, serve: bool = True) -> None:
        self.root = project_root
        self.endpoint = endpoint or Endpoint()
        self.registry = HandlerRegistry()
        self._serve = serve
        #: Off only to measure what the wrapped engine costs without them (bench/e2e.py --no-speedups).
        self.engine_speedups = True
        self._mock: Any = None
        self._server: ThreadedMotoServer | None = None
        self.query_state_machine_arn = ""

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(name, "test")
        os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
        os.environ["MOTO_PORT"] = str(self.endpoint.port)
        # moto logs whole ASTs on every task failure (a caught shard failure included).
        for noisy in ("moto", "werkzeug", "botocore.credentials"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        default_user_config["stepfunctions"] = {"execute_state_machine": True}
        # Lambda's docker mode is the one that calls ``_invoke_lambda`` (patched by dispatch.install); the
        # "simple" backend would only echo events.
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        self._mock.start()
        install(self.registry)
        _untracked_models()
        _transactions_back_up_items()
        if self.engine_speedups:
            _speed_up_engine()
        if self._serve:
            self._server = ThreadedMotoServer(ip_address=self.endpoint.host, port=self.endpoint.port, verbose=False)
            self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        uninstall()
        if self._mock is not None:
            self._mock.stop()
            self._mock = None

    def client(self, service: str) -> Any:
        """An in-process client (through moto's botocore hook, no HTTP)."""
        return boto3.client(service, region_name=REGION)  # type: ignore[call-overload]

    # -- state across restarts ----------------------------------------------------------------------------
    # moto keeps S3 objects and DynamoDB items in memory; the shards persist on disk. Saving both on a clean
    # stop and restoring them at start keeps the bucket, the registry and the index consistent between runs.
    def save_state(self, directory: Path) -> dict[str, int]:
        """Write every S3 object and DynamoDB item to ``directory`` (replacing what was there)."""
        import hashlib
        import shutil

        staging = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        counts = {"objects": 0, "items": 0}
        s3 = self.client("s3")
        for bucket in s3.list_buckets()["Buckets"]:
            root = staging / "s3" / bucket["Name"]
            root.mkdir(parents=True, exist_ok=True)
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
                for item in page.get("Contents", []):
                    body = s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                    # Named by a hash, the key beside it: an S3 key (up to 1,024 bytes) quoted as a file name
                    # could exceed the file system's 255 (a valid upload used to crash the snapshot).
                    name = hashlib.sha256(item["Key"].encode()).hexdigest()
                    (root / f"{name}.key").write_text(item["Key"], encoding="utf-8")
                    (root / f"{name}.obj").write_bytes(body)
                    counts["objects"] += 1
        ddb = self.client("dynamodb")
        (staging / "dynamodb").mkdir(parents=True, exist_ok=True)
        for table in ddb.list_tables()["TableNames"]:
            with (staging / "dynamodb" / f"{table}.jsonl").open("w") as out:
                for page in ddb.get_paginator("scan").paginate(TableName=table):
                    for record in page["Items"]:
                        out.write(json.dumps(record) + "\n")
                        counts["items"] += 1
        # Swap in one rename so that a crash mid-save leaves the previous snapshot intact.
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
        return counts

    def restore_objects(self, directory: Path) -> int:
        """Put saved S3 objects back (call before bucket notifications exist, so nothing is re-ingested)."""
        from urllib.parse import unquote

        s3 = self.client("s3")
        restored = 0
        for root in sorted((directory / "s3").glob("*")) if (directory / "s3").is_dir() else []:
            existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
            if root.name not in existing:
                s3.create_bucket(Bucket=root.name)
            for path in sorted(root.iterdir()):
                if path.suffix == ".key":
                    continue
                if path.suffix == ".obj":
                    key = path.with_suffix(".key").read_text(encoding="utf-8")
                else:
                    key = unquote(path.name)  # a snapshot from before keys were stored beside their bodies
                s3.put_object(Bucket=root.name, Key=key, Body=path.read_bytes())
                restored += 1
        return restored

    def restore_items(self, directory: Path) -> int:
        """Put saved DynamoDB items back into tables that exist (created by whoever owns them)."""
        ddb = self.client("dynamodb")
        tables = set(ddb.list_tables()["TableNames"])
        restored = 0
        for path in sorted((directory / "dynamodb").glob("*.jsonl")) if (directory / "dynamodb").is_dir() else []:
            if path.stem not in tables:
                continue
            for line in path.read_text().splitlines():
                if line.strip():
                    ddb.put_item(TableName=path.stem, Item=json.loads(line))
                    restored += 1
        return restored

    # -- deployment ------------------------------------------------------------------------------------
    def _role_arn(self) -> str:
        iam = self.client("iam")
        try:
            return str(iam.get_role(RoleName=_ROLE)["Role"]["Arn"])
        except iam.exceptions.NoSuchEntityException:
            trust = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
            return str(iam.create_role(RoleName=_ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])

    def deploy_function(self, folder: str, *, timeout_s: int = 30) -> str:
        """Create ``shardrag-<folder>`` in the emulated Lambda and register its real handler."""
        name = f"shardrag-{folder.replace('_', '-')}"
        lam = self.client("lambda")
        try:
            arn = str(lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"])
        except lam.exceptions.ResourceNotFoundException:
            arn = str(
                lam.create_function(
                    FunctionName=name,
                    Runtime="python3.12",
                    Role=self._role_arn(),
                    Handler="handler.handler",
                    Code={"ZipFile": _placeholder_zip()},
                    Timeout=timeout_s,
                )["FunctionArn"]
            )
        self.registry.register(name, self.root / "functions" / folder, "handler.handler", timeout_s)
        return arn

    def deploy_query_workflow(self, shard_count: int) -> str:
        arns = {placeholder: self.deploy_function(folder) for placeholder, folder in QUERY_FUNCTIONS.items()}
        template = (self.root / "statemachines" / "query.asl.json").read_text()
        definition = substitute(render_definition(template, shard_count), arns)
        sfn = self.client("stepfunctions")
        existing = {m["name"]: m["stateMachineArn"] for m in sfn.list_state_machines()["stateMachines"]}
        if QUERY_STATE_MACHINE in existing:
            arn = existing[QUERY_STATE_MACHINE]
            sfn.update_state_machine(stateMachineArn=arn, definition=definition)
        else:
            arn = sfn.create_state_machine(
                name=QUERY_STATE_MACHINE, definition=definition, roleArn=self._role_arn(), type="EXPRESS"
            )["stateMachineArn"]
        self.query_state_machine_arn = str(arn)
        return self.query_state_machine_arn

    # -- executions ------------------------------------------------------------------------------------
    def start_sync_execution(self, state_machine_arn: str, payload: str, name: str | None = None) -> dict[str, Any]:
        """StartSyncExecution, which moto does not route: run the engine's own ``SyncExecution`` in this thread.

        Returns the API's response shape (``status``, ``output`` | ``error`` + ``cause``).
        """
        from moto.stepfunctions.parser.backend.execution import SyncExecution
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        backend = stepfunctions_parser_backends[ACCOUNT][REGION]
        machine = backend.describe_state_machine(state_machine_arn)
        name = name or uuid.uuid4().hex
        execution = SyncExecution(
            name=name,
            sm_type=machine.sm_type,  # type: ignore[arg-type]
            role_arn=machine.roleArn,
            exec_arn=f"arn:aws:states:{REGION}:{ACCOUNT}:express:{machine.name}:{name}:{uuid.uuid4().hex[:8]}",
            account_id=ACCOUNT,
            region_name=REGION,
            state_machine=machine,  # type: ignore[arg-type]
            start_date=datetime.datetime.now(tz=datetime.UTC),
            cloud_watch_logging_session=None,
            activity_store={},
            input_data=payload,
        )
        execution.start()
        _prune_finished_threads()
        output = execution.to_start_sync_execution_output()
        status = output.get("status")
        return {
            "executionArn": output["executionArn"],
            "status": getattr(status, "value", status),
            "output": output.get("output"),
            "error": output.get("error"),
            "cause": output.get("cause"),
        }
