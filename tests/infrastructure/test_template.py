"""Template assertions, found by resource properties (never by logical id)."""

from __future__ import annotations

import json
import re
from typing import Any

from cdk_synthesis import Synthesis
from shardrag.config import Settings
from shardrag.env import ANSWER_CACHE_TABLE, ARTIFACTS_BUCKET, EPOCH_TABLE
from shardrag.errors import ERROR_STATUS
from shardrag.ingestion.registry import table_definition
from shardrag.statemachine import PLACEHOLDER, QUERY_FUNCTIONS
from shardrag.visibility import CLOCK_KEY
from shardrag_cdk import api_mapping
from shardrag_cdk.layout import MAX_LAYERS, STATE_MACHINE_FILE, STORE_FUNCTIONS

QUERY_HANDLER = "handler.handler"


def _refs(node: Any) -> set[str]:
    """Logical ids referenced (Ref / Fn::GetAtt) anywhere inside ``node``."""
    found: set[str] = set()
    if isinstance(node, dict):
        if "Ref" in node and isinstance(node["Ref"], str):
            found.add(node["Ref"])
        if "Fn::GetAtt" in node:
            found.add(node["Fn::GetAtt"][0])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _project_functions(synth: Synthesis) -> dict[str, dict[str, Any]]:
    return {
        k: v
        for k, v in synth.resources("AWS::Lambda::Function").items()
        if v["Properties"].get("Handler") == QUERY_HANDLER
    }


def _state_machine(synth: Synthesis) -> dict[str, Any]:
    machines = synth.properties("AWS::StepFunctions::StateMachine")
    assert len(machines) == 1
    return machines[0]


def _definition(synth: Synthesis) -> dict[str, Any]:
    text = _state_machine(synth)["DefinitionString"]
    assert isinstance(text, str), "definition must stay inline (DefinitionBody.from_string)"
    return json.loads(text)


def _alias_function(synth: Synthesis, alias_id: str) -> str:
    alias = synth.template["Resources"][alias_id]
    assert alias["Type"] == "AWS::Lambda::Alias"
    return next(iter(_refs(alias["Properties"]["FunctionName"])))


def test_query_workflow_is_express_with_one_branch_per_shard(synth: Synthesis) -> None:
    machine = _state_machine(synth)
    assert machine["StateMachineType"] == "EXPRESS"
    parallel = [s for s in _definition(synth)["States"].values() if s["Type"] == "Parallel"]
    assert len(parallel) == 1
    assert len(parallel[0]["Branches"]) == synth.config.settings.store.shard_count
    # Each branch searches its own shard.
    shards = sorted(
        b["States"][f"SearchShard{i}"]["Parameters"]["Payload"]["shard"] for i, b in enumerate(parallel[0]["Branches"])
    )
    assert shards == list(range(synth.config.settings.store.shard_count))


def test_every_placeholder_is_substituted_with_a_query_function(synth: Synthesis) -> None:
    machine = _state_machine(synth)
    used = set(PLACEHOLDER.findall(machine["DefinitionString"]))
    substitutions = machine.get("DefinitionSubstitutions", {})
    assert used == set(substitutions) == set(QUERY_FUNCTIONS)
    functions = _project_functions(synth)
    for placeholder, folder in QUERY_FUNCTIONS.items():
        (alias_id,) = _refs(substitutions[placeholder])
        function = functions[_alias_function(synth, alias_id)]
        assert function["Properties"]["Description"] == f"ShardRAG {folder}"


def test_workflow_role_may_invoke_exactly_the_query_aliases(synth: Synthesis) -> None:
    machine = _state_machine(synth)
    (role_id,) = _refs(machine["RoleArn"])
    invoked: set[str] = set()
    for policy in synth.properties("AWS::IAM::Policy"):
        if role_id not in _refs(policy["Roles"]):
            continue
        for statement in policy["PolicyDocument"]["Statement"]:
            if "lambda:InvokeFunction" in statement["Action"]:
                invoked |= _refs(statement["Resource"])
    assert invoked == _refs(machine["DefinitionSubstitutions"])


def test_workflow_logs_and_traces(synth: Synthesis) -> None:
    machine = _state_machine(synth)
    assert machine["TracingConfiguration"] == {"Enabled": True}
    logging = machine["LoggingConfiguration"]
    assert logging["Level"] == synth.config.deployment.workflow_log_level
    assert logging["IncludeExecutionData"] is synth.config.deployment.workflow_log_execution_data


def test_function_timeouts_fit_their_task_timeouts(synth: Synthesis) -> None:
    """A Lambda outliving its Task's TimeoutSeconds would keep running (and billing) for an abandoned call."""
    states = json.loads(STATE_MACHINE_FILE.read_text())["States"]
    by_function = {
        "embed": states["Embed"],
        "route": states["Route"],
        "feedback": states["Feedback"],
        "fuse_generate": states["FuseAndGenerate"],
    }
    branch = states["SearchShards"]["Branches"][0]["States"]
    by_function["shard_search"] = next(s for s in branch.values() if s["Type"] == "Task")
    for name, state in by_function.items():
        assert synth.config.deployment.functions.of(name).timeout_s <= state["TimeoutSeconds"], name


def test_query_api_starts_a_synchronous_execution(synth: Synthesis) -> None:
    # /chat and /uploads are the chat front's Lambda proxy integrations (tests/infrastructure/test_chat_front.py).
    (method,) = [
        m
        for m in synth.properties("AWS::ApiGateway::Method")
        if m["HttpMethod"] == "POST" and m["Integration"]["Type"] != "AWS_PROXY"
    ]
    assert "StartSyncExecution" in json.dumps(method["Integration"]["Uri"])
    assert method["AuthorizationType"] == "AWS_IAM"  # the default auth mode of both environments
    request = method["Integration"]["RequestTemplates"]["application/json"]
    assert _refs(request) == {next(iter(synth.resources("AWS::StepFunctions::StateMachine")))}
    assert "$input.json('$')" in json.dumps(request)
    (validator,) = synth.properties("AWS::ApiGateway::RequestValidator")
    assert validator["ValidateRequestBody"] is True
    (model,) = synth.properties("AWS::ApiGateway::Model")
    assert model["Schema"] == api_mapping.request_model_schema()


def test_response_mapping_sets_every_error_status(synth: Synthesis) -> None:
    (method,) = [
        m
        for m in synth.properties("AWS::ApiGateway::Method")
        if m["HttpMethod"] == "POST" and m["Integration"]["Type"] != "AWS_PROXY"
    ]
    responses = method["Integration"]["IntegrationResponses"]
    template = next(r for r in responses if r["StatusCode"] == "200")["ResponseTemplates"]["application/json"]
    for name, (status, code) in ERROR_STATUS.items():
        branch = re.search(
            rf'\$error == "{re.escape(name)}"\)\n'
            r"#set\(\$context.responseOverride.status = (\d+)\)\n"
            r'#set\(\$code = "(\w+)"\)',
            template,
        )
        assert branch and (int(branch[1]), branch[2]) == (status, code), name
    declared = {int(r["StatusCode"]) for r in method["MethodResponses"]}
    assert {200, 500, 504} | {status for status, _ in ERROR_STATUS.values()} <= declared
    assert "stackTrace" not in template


def test_api_stage_is_throttled_traced_and_access_logged(synth: Synthesis) -> None:
    (stage,) = synth.properties("AWS::ApiGateway::Stage")
    api = synth.config.deployment.api
    assert stage["TracingEnabled"] is True
    assert stage["AccessLogSetting"]["DestinationArn"]
    assert json.loads(stage["AccessLogSetting"]["Format"])["requestId"]
    (settings,) = stage["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == api.throttle_rate_limit
    assert settings["ThrottlingBurstLimit"] == api.throttle_burst_limit
    assert settings["LoggingLevel"] == "ERROR" and settings["DataTraceEnabled"] is False


def test_health_is_a_mock_integration(synth: Synthesis) -> None:
    (get,) = [
        m
        for m in synth.properties("AWS::ApiGateway::Method")
        if m["HttpMethod"] == "GET" and m["Integration"]["Type"] != "AWS_PROXY"
    ]
    assert get["Integration"]["Type"] == "MOCK"


def test_bucket_notifies_the_queue_on_create_and_remove(synth: Synthesis) -> None:
    (notifications,) = synth.properties("Custom::S3BucketNotifications")
    configs = notifications["NotificationConfiguration"]["QueueConfigurations"]
    events = {event for config in configs for event in config["Events"]}
    assert events == {"s3:ObjectCreated:*", "s3:ObjectRemoved:*"}
    queues = {queue for config in configs for queue in _refs(config["QueueArn"])}
    assert len(queues) == 1 and synth.template["Resources"][queues.pop()]["Type"] == "AWS::SQS::Queue"
    (bucket_id,) = _refs(notifications["BucketName"])
    assert synth.template["Resources"][bucket_id]["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}


def _documents_bucket(synth: Synthesis) -> str:
    (notifications,) = synth.properties("Custom::S3BucketNotifications")
    (bucket_id,) = _refs(notifications["BucketName"])
    return bucket_id


def _artifacts_bucket(synth: Synthesis) -> str:
    """The bucket named by the functions' SHARDRAG_ARTIFACTS_BUCKET (one bucket for all of them)."""
    named = {
        ref
        for f in _project_functions(synth).values()
        if ARTIFACTS_BUCKET in (variables := f["Properties"]["Environment"]["Variables"])
        for ref in _refs(variables[ARTIFACTS_BUCKET])
    }
    assert len(named) == 1, named
    return named.pop()


def test_data_buckets_are_private_encrypted_versioned_logged_and_tls_only(synth: Synthesis) -> None:
    buckets = synth.resources("AWS::S3::Bucket")
    documents_id, artifacts_id = _documents_bucket(synth), _artifacts_bucket(synth)
    assert documents_id != artifacts_id  # an artefact written to the documents bucket would be ingested
    for data_id in (documents_id, artifacts_id):
        data = buckets[data_id]["Properties"]
        assert data["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert all(data["PublicAccessBlockConfiguration"].values())
        assert data["VersioningConfiguration"] == {"Status": "Enabled"}
        assert data["LoggingConfiguration"]["DestinationBucketName"]
        policy = "Retain" if synth.config.deployment.removal_policy == "retain" else "Delete"
        assert buckets[data_id]["DeletionPolicy"] == policy
    for bucket_id in buckets:
        policies = [p for p in synth.properties("AWS::S3::BucketPolicy") if bucket_id in _refs(p["Bucket"])]
        statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
        assert any(
            s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in statements
        ), bucket_id


def test_ingest_queue_outlasts_the_function_and_redrives_to_a_dlq(synth: Synthesis) -> None:
    (mapping,) = synth.properties("AWS::Lambda::EventSourceMapping")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    (queue_id,) = _refs(mapping["EventSourceArn"])
    queue = synth.template["Resources"][queue_id]["Properties"]
    function_id = _alias_function(synth, next(iter(_refs(mapping["FunctionName"]))))
    timeout = synth.template["Resources"][function_id]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * timeout
    assert queue["SqsManagedSseEnabled"] is True
    redrive = queue["RedrivePolicy"]
    assert redrive["maxReceiveCount"] == synth.config.deployment.ingestion.max_receive_count
    (dlq_id,) = _refs(redrive["deadLetterTargetArn"])
    assert synth.template["Resources"][dlq_id]["Properties"]["SqsManagedSseEnabled"] is True


def _tables(synth: Synthesis) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The registry table (the only one without TTL) and the other tables (answer cache, conversations) by
    logical id."""
    tables = synth.resources("AWS::DynamoDB::Table")
    registry = [t["Properties"] for t in tables.values() if "TimeToLiveSpecification" not in t["Properties"]]
    assert len(registry) == 1
    return registry[0], {k: v for k, v in tables.items() if "TimeToLiveSpecification" in v["Properties"]}


def test_tables_have_pitr_encryption_and_on_demand_billing(synth: Synthesis) -> None:
    tables = synth.properties("AWS::DynamoDB::Table")
    # the document registry, the chat conversations and, where answers are cached, the answer cache
    assert len(tables) == 2 + synth.config.settings.cache.answers
    for table in tables:
        assert table["SSESpecification"]["SSEEnabled"] is True
        assert table["BillingMode"] == "PAY_PER_REQUEST"
    registry, _ = _tables(synth)
    assert registry["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_registry_table_matches_the_schema_the_code_uses(synth: Synthesis) -> None:
    table, _ = _tables(synth)
    wanted = table_definition("any")
    assert table["KeySchema"] == wanted["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(wanted["AttributeDefinitions"], key=str)
    indexes = {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table["GlobalSecondaryIndexes"]}
    assert indexes == {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in wanted["GlobalSecondaryIndexes"]}


def test_functions_run_python312_with_active_tracing(synth: Synthesis) -> None:
    functions = _project_functions(synth)
    assert len(functions) == 7  # embed, route, shard_search, feedback, fuse_generate, ingest, answer
    for function in functions.values():
        props = function["Properties"]
        assert props["Runtime"] == "python3.12"
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert 1 <= len(props["Layers"]) <= MAX_LAYERS
        variables = props["Environment"]["Variables"]
        assert {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"} <= set(variables)


def test_vpc_placement_follows_the_config(synth: Synthesis) -> None:
    network = synth.config.deployment.network
    (functions_sg,) = [
        k
        for k, v in synth.resources("AWS::EC2::SecurityGroup").items()
        if v["Properties"]["GroupDescription"] == "ShardRAG functions that reach the vector store"
    ]
    for function in _project_functions(synth).values():
        props = function["Properties"]
        name = props["Description"].removeprefix("ShardRAG ")
        if network and name in network.functions:
            assert _refs(props["VpcConfig"]["SecurityGroupIds"]) == {functions_sg}
            assert len(props["VpcConfig"]["SubnetIds"]) == network.max_azs
        else:
            assert "VpcConfig" not in props


def test_provisioned_concurrency_sits_on_the_live_alias(synth: Synthesis) -> None:
    functions = _project_functions(synth)
    for alias in synth.properties("AWS::Lambda::Alias"):
        name = functions[next(iter(_refs(alias["FunctionName"])))]["Properties"]["Description"].removeprefix(
            "ShardRAG "
        )
        wanted = synth.config.deployment.functions.of(name).provisioned_concurrency
        config = alias.get("ProvisionedConcurrencyConfig")
        assert (config or {}).get("ProvisionedConcurrentExecutions", 0) == wanted


_TOKENISH = re.compile(r"^(?:[A-Za-z0-9+/=_-]{32,}|Bearer .+|(?:sk|db|ghp|xox[bp])[-_][A-Za-z0-9_-]{8,})$")
_SECRET_KEYS = {"token", "api_key", "apikey", "password", "secret", "access_key", "secret_key"}


def _secret_like(node: Any, path: str = "") -> list[str]:
    """Paths of values that look like credentials, or sit under credential-like keys."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key.lower() in _SECRET_KEYS and value:
                found.append(f"{path}.{key}")
            found += _secret_like(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _secret_like(value, f"{path}[{i}]")
    elif isinstance(node, str) and _TOKENISH.match(node):
        found.append(path)
    return found


def _text(value: Any) -> str:
    """A template string, with every ``Fn::Join`` part that is a reference replaced by ``"<ref>"``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_text(part) for part in parts)
    return "<ref>"


def _settings(synth: Synthesis, function_name: str = "shard_search") -> dict[str, Any]:
    function = next(
        f for f in _project_functions(synth).values() if f["Properties"]["Description"] == f"ShardRAG {function_name}"
    )
    return json.loads(_text(function["Properties"]["Environment"]["Variables"]["SHARDRAG_SETTINGS"]))


def test_no_credentials_in_environment_variables(synth: Synthesis) -> None:
    for function_id, function in _project_functions(synth).items():
        variables = function["Properties"]["Environment"]["Variables"]
        for name, value in variables.items():
            assert not any(word in name.upper() for word in ("TOKEN", "PASSWORD", "API_KEY")), name
            text = _text(value)
            parsed = json.loads(text) if text.startswith("{") else text
            assert _secret_like(parsed) == [], f"{function_id}.{name}"


def test_the_stack_wires_every_shard_to_its_store(synth: Synthesis) -> None:
    """One collection per shard on the one store the stack runs, over TLS, with its token and CA secrets."""
    store = _settings(synth)["store"]
    assert "shards" not in store  # one endpoint for all: written once, whatever the shard count
    # What the runtime will connect to: the settings parsed by the runtime's own model.
    shards = Settings.model_validate(_settings(synth)).shard_endpoints()
    count = synth.config.settings.store.shard_count
    assert len(shards) == count
    assert [s.collection for s in shards] == [f"shardrag_chunks_shard{i}" for i in range(count)]
    assert all(s.uri.startswith("https://") and s.uri.endswith(":19530") for s in shards)
    assert all(s.token_secret == "<ref>" and s.ca_secret == "<ref>" for s in shards)
    assert {s.server_name for s in shards} == {"milvus.shardrag.internal"}
    assert "example.internal" not in json.dumps(synth.template)
    # Every function gets the same wiring (ingest writes where shard_search and feedback read).
    assert _settings(synth, "ingest")["store"] == _settings(synth)["store"]
    assert _settings(synth, "feedback")["store"] == _settings(synth)["store"]


def test_store_secrets_readable_only_by_the_milvus_functions(synth: Synthesis) -> None:
    functions = _project_functions(synth)
    roles = {next(iter(_refs(f["Properties"]["Role"]))): f["Properties"]["Description"] for f in functions.values()}
    secrets = set(synth.resources("AWS::SecretsManager::Secret"))
    readers: dict[str, set[str]] = {}
    for policy in synth.properties("AWS::IAM::Policy"):
        for statement in policy["PolicyDocument"]["Statement"]:
            if "secretsmanager:GetSecretValue" in statement["Action"]:
                for role in _refs(policy["Roles"]) & set(roles):
                    readers.setdefault(roles[role], set()).update(_refs(statement["Resource"]))
    assert set(readers) == {f"ShardRAG {name}" for name in STORE_FUNCTIONS}
    assert set(STORE_FUNCTIONS) == {"shard_search", "feedback", "ingest"}
    for resources in readers.values():
        assert resources == secrets  # the root password and the CA certificate, nothing else


#: Actions AWS does not let a policy scope to a resource: the only ones allowed on ``Resource: "*"``.
UNSCOPABLE = {
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "xray:GetSamplingRules",
    "xray:GetSamplingTargets",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
    # No resource type in the Service Authorization Reference; the model is scoped by bedrock:InvokeModel.
    "bedrock:Rerank",
}
DATA_SERVICES = ("s3:", "dynamodb:", "sqs:", "secretsmanager:", "bedrock:", "lambda:", "states:", "kms:")


def _statements(synth: Synthesis) -> list[dict[str, Any]]:
    statements = [s for p in synth.properties("AWS::IAM::Policy") for s in p["PolicyDocument"]["Statement"]]
    for role in synth.properties("AWS::IAM::Role"):
        statements += [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    return statements


def test_least_privilege(synth: Synthesis) -> None:
    for statement in _statements(synth):
        if statement["Effect"] != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            assert action != "*" and not action.endswith(":*"), statement
            if action.startswith(DATA_SERVICES):
                assert "*" not in action, statement  # no s3:GetObject* style families on data
        if "*" in resources:
            assert set(actions) <= UNSCOPABLE, statement


def _role_statements(synth: Synthesis) -> dict[str, list[dict[str, Any]]]:
    """Allow statements of each project function's role, by function name."""
    roles = {
        next(iter(_refs(f["Properties"]["Role"]))): f["Properties"]["Description"].removeprefix("ShardRAG ")
        for f in _project_functions(synth).values()
    }
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in roles.values()}
    for policy in synth.properties("AWS::IAM::Policy"):
        for role in _refs(policy["Roles"]) & set(roles):
            found[roles[role]] += [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    return found


def _actions(statement: dict[str, Any]) -> list[str]:
    return statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]


def test_artifacts_bucket_is_read_by_embed_and_route_and_written_by_ingest_only(synth: Synthesis) -> None:
    bucket = _artifacts_bucket(synth)
    with_variable = {
        f["Properties"]["Description"].removeprefix("ShardRAG ")
        for f in _project_functions(synth).values()
        if ARTIFACTS_BUCKET in f["Properties"]["Environment"]["Variables"]
    }
    assert with_variable == {"embed", "route", "ingest"}
    on_objects: dict[str, set[str]] = {}
    for name, statements in _role_statements(synth).items():
        for statement in statements:
            if bucket not in _refs(statement["Resource"]):
                continue
            if "s3:ListBucket" in _actions(statement):
                assert statement["Resource"] == {"Fn::GetAtt": [bucket, "Arn"]}, statement  # the bucket, no keys
                continue
            assert json.dumps(statement["Resource"]).endswith('"/index/*"]]}'), statement
            on_objects.setdefault(name, set()).update(_actions(statement))
    assert on_objects == {
        "embed": {"s3:GetObject"},
        "route": {"s3:GetObject"},
        "ingest": {"s3:GetObject", "s3:PutObject"},
    }


def test_the_answer_cache_table_exists_where_answers_are_cached_and_each_function_gets_one_action(
    synth: Synthesis,
) -> None:
    _, with_ttl = _tables(synth)
    # The conversations table (chat) is the one with an index (a caller's conversations, newest first).
    others = {k: v for k, v in with_ttl.items() if not v["Properties"].get("GlobalSecondaryIndexes")}
    with_variable = {
        f["Properties"]["Description"].removeprefix("ShardRAG ")
        for f in _project_functions(synth).values()
        if ANSWER_CACHE_TABLE in f["Properties"]["Environment"]["Variables"]
    }
    dynamodb_actions = {
        name: {a for s in statements for a in _actions(s) if a.startswith("dynamodb:")}
        for name, statements in _role_statements(synth).items()
    }
    if not synth.config.settings.cache.answers:
        # Off (the default): no table, no variable, nothing granted beyond the registry's ingest rights.
        assert others == {} and with_variable == set()
        # (the chat's answer function reads the registry and writes conversations, never the cache; Embed reads
        # the epoch clock's item of the registry)
        assert {name for name, actions in dynamodb_actions.items() if actions} <= {"ingest", "answer", "embed"}
        return
    [(table_id, table)] = others.items()
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"  # nothing runs or bills while idle
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert with_variable == {"embed", "fuse_generate", "ingest"}
    on_table: dict[str, set[str]] = {}
    for name, statements in _role_statements(synth).items():
        for statement in statements:
            if table_id in _refs(statement["Resource"]):
                assert statement["Resource"] == {"Fn::GetAtt": [table_id, "Arn"]}, statement  # the table only
                on_table.setdefault(name, set()).update(_actions(statement))
    assert on_table == {
        "embed": {"dynamodb:GetItem"},
        "fuse_generate": {"dynamodb:PutItem"},
        "ingest": {"dynamodb:UpdateItem"},
    }


def test_embed_reads_the_epoch_clock_item_of_the_registry_and_ingest_writes_it(synth: Synthesis) -> None:
    # Every query's snapshot (shardrag.visibility) is read at Embed; the ingest function begins and commits epochs.
    [registry_id] = [
        k
        for k, t in synth.resources("AWS::DynamoDB::Table").items()
        if "TimeToLiveSpecification" not in t["Properties"]  # the registry (``_tables``)
    ]
    variables = {
        f["Properties"]["Description"].removeprefix("ShardRAG "): f["Properties"]["Environment"]["Variables"]
        for f in _project_functions(synth).values()
    }
    named = {name: v[EPOCH_TABLE] for name, v in variables.items() if EPOCH_TABLE in v}
    assert set(named) == {"embed", "ingest"}
    assert all(_refs(value) == {registry_id} for value in named.values())
    on_registry = [
        statement for statement in _role_statements(synth)["embed"] if registry_id in _refs(statement["Resource"])
    ]
    # The clock's item only: a query function has no business reading documents' records.
    assert [(_actions(s), s.get("Condition")) for s in on_registry] == [
        (["dynamodb:GetItem"], {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [CLOCK_KEY]}})
    ]


def test_the_workflow_ends_with_a_cached_answer_when_embed_found_one(synth: Synthesis) -> None:
    states = _definition(synth)["States"]
    assert states["Embed"]["ResultSelector"]["cached.$"] == "$.Payload.cached"
    assert states["Embed"]["Next"] == "AnswerCached"
    choice = states["AnswerCached"]
    assert choice["Choices"] == [{"Variable": "$.cached", "IsNull": False, "Next": "CachedAnswer"}]
    assert choice["Default"] == "Route"
    assert states["CachedAnswer"] == {"Type": "Pass", "OutputPath": "$.cached", "End": True}


def test_no_reranker_no_rerank_permission(synth: Synthesis) -> None:
    if synth.config.settings.rerank.kind != "none":
        return
    actions = {a for statements in _role_statements(synth).values() for s in statements for a in _actions(s)}
    assert "bedrock:Rerank" not in actions


def test_workflow_passes_the_api_input_to_embed_and_the_sparse_query_to_each_shard(synth: Synthesis) -> None:
    """The API sends ``{"request", "caller"}``; Embed takes both, and every shard search gets the sparse query."""
    states = _definition(synth)["States"]
    embed = states["Embed"]["Parameters"]["Payload"]
    assert embed["request.$"] == "$.request" and embed["caller.$"] == "$.caller"
    assert states["Embed"]["ResultSelector"]["sparse.$"] == "$.Payload.sparse"
    for i, branch in enumerate(states["SearchShards"]["Branches"]):
        search = branch["States"][f"SearchShard{i}"]
        assert search["Parameters"]["Payload"]["sparse.$"] == "$.sparse"
        assert search["ResultSelector"]["lexical.$"] == "$.Payload.lexical"


def test_gateway_responses_are_valid_json_whatever_the_error_text(synth: Synthesis) -> None:
    """Gateway response templates get plain variable substitution (no VTL escaping): only variables API Gateway
    itself quotes may appear, so that an error text with quotes still yields a JSON body."""
    hostile = 'instance value ("x\\") not found in enum (possible values: ["dense"])'
    responses = synth.properties("AWS::ApiGateway::GatewayResponse")
    assert {r["ResponseType"] for r in responses} >= {"BAD_REQUEST_BODY", "DEFAULT_4XX", "DEFAULT_5XX"}
    for response in responses:
        for template in response.get("ResponseTemplates", {}).values():
            assert "validationErrorString" not in template
            body = template.replace("$context.error.messageString", json.dumps(hostile))
            assert json.loads(body)["error"]["message"] in (hostile, api_mapping.TIMEOUT_MESSAGE)


def test_ingest_reads_its_model_archive_and_nothing_else_of_the_assets_bucket(synth: Synthesis) -> None:
    ingest = next(
        f["Properties"]
        for f in _project_functions(synth).values()
        if f["Properties"]["Description"] == "ShardRAG ingest"
    )
    archive = ingest["Environment"]["Variables"]["SHARDRAG_MODEL_ARCHIVE"]["Fn::Sub"]
    assert re.fullmatch(r"s3://cdk-\w+-assets-\$\{AWS::AccountId\}-[\w:{}$-]+/[0-9a-f]{64}\.zip", archive), archive
    assert "SHARDRAG_MODEL_DIR" not in ingest["Environment"]["Variables"]  # set at cold start, after the download
    key = archive.rsplit("/", 1)[1]
    reads = [
        s
        for s in _role_statements(synth)["ingest"]
        if s["Action"] == "s3:GetObject" and key in json.dumps(s["Resource"])
    ]
    assert len(reads) == 1
