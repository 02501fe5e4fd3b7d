"""The chat front in the synthesised template: the conversations table, the answer function and its streaming
routes, what the function may touch, and the AWS limits the design relies on (checked against the documentation:
API Gateway response streaming is for REST proxy integrations, 15 minutes at most per stream, an idle timeout of
5 minutes on a regional endpoint; Lambda's longest timeout is 15 minutes)."""

from __future__ import annotations

from typing import Any

from cdk_synthesis import Synthesis
from shardrag import env
from shardrag.chat.conversations import TTL_ATTRIBUTE, table_definition
from shardrag.chat.sse import DEFAULT_KEEPALIVE_S
from shardrag_cdk.chat import EXEC_WRAPPER

#: API Gateway REST response streaming: longest stream, idle timeout on a regional endpoint (seconds).
STREAM_MAX_S = 15 * 60
REGIONAL_IDLE_TIMEOUT_S = 5 * 60


def _answer(synth: Synthesis) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (k, v["Properties"])
        for k, v in synth.resources("AWS::Lambda::Function").items()
        if v["Properties"].get("Description") == "ShardRAG answer"
    ]
    return found


def _conversations(synth: Synthesis) -> dict[str, Any]:
    # The only table with a sort key (turns); the answer cache, also with TTL, has a hash key alone.
    (table,) = [t for t in synth.properties("AWS::DynamoDB::Table") if len(t["KeySchema"]) == 2]
    return table


def _methods(synth: Synthesis) -> dict[tuple[str, str], dict[str, Any]]:
    """(HTTP method, path) -> method properties, the path rebuilt from the resources' parents."""
    resources = synth.resources("AWS::ApiGateway::Resource")

    def path(ref: Any) -> str:
        if isinstance(ref, dict) and "Ref" in ref and ref["Ref"] in resources:
            props = resources[ref["Ref"]]["Properties"]
            return path(props["ParentId"]).rstrip("/") + "/" + props["PathPart"]
        return "/"

    return {(m["HttpMethod"], path(m["ResourceId"])): m for m in synth.properties("AWS::ApiGateway::Method")}


def test_conversations_table_matches_the_code_and_expires_turns(synth: Synthesis) -> None:
    table = _conversations(synth)
    wanted = table_definition("any")
    assert table["KeySchema"] == wanted["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(wanted["AttributeDefinitions"], key=str)
    indexes = {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table["GlobalSecondaryIndexes"]}
    assert indexes == {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in wanted["GlobalSecondaryIndexes"]}
    assert table["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}


def test_chat_routes_stream_from_the_answer_function_with_the_apis_auth(synth: Synthesis) -> None:
    methods = _methods(synth)

    query_auth = methods[("POST", "/query")]["AuthorizationType"]
    for key in [("POST", "/chat"), ("GET", "/chat/sessions"), ("GET", "/chat/sessions/{session}"),
                ("POST", "/uploads"), ("GET", "/uploads/status"), ("GET", "/"), ("GET", "/static/{file}")]:  # fmt: skip
        integration = methods[key]["Integration"]
        assert integration["Type"] == "AWS_PROXY", key
        assert integration["ResponseTransferMode"] == "STREAM", key
        uri = str(integration["Uri"])
        # Streaming invokes InvokeWithResponseStream: its own API version and path, on the live alias.
        assert "2021-11-15/functions/" in uri and "response-streaming-invocations" in uri, key
        expected = "NONE" if key in {("GET", "/"), ("GET", "/static/{file}")} else query_auth
        assert methods[key]["AuthorizationType"] == expected, key
    (api,) = synth.properties("AWS::ApiGateway::RestApi")
    assert api["EndpointConfiguration"]["Types"] == ["REGIONAL"]  # the 5-minute idle timeout (edge: 30 s)


def test_answer_function_runs_the_streaming_loop_within_the_limits(synth: Synthesis) -> None:
    _, props = _answer(synth)
    variables = props["Environment"]["Variables"]
    assert variables["AWS_LAMBDA_EXEC_WRAPPER"] == EXEC_WRAPPER
    assert {env.QUERY_STATE_MACHINE_ARN, env.CONVERSATIONS_TABLE, env.DOCUMENTS_BUCKET, env.REGISTRY_TABLE} <= set(
        variables
    )
    assert props["Timeout"] <= STREAM_MAX_S  # a longer function would be cut by API Gateway anyway
    assert DEFAULT_KEEPALIVE_S < REGIONAL_IDLE_TIMEOUT_S / 10


def _answer_statements(synth: Synthesis) -> list[dict[str, Any]]:
    _, props = _answer(synth)
    role = props["Role"]["Fn::GetAtt"][0]
    found = []
    for policy in synth.properties("AWS::IAM::Policy"):
        if any(r.get("Ref") == role for r in policy["Roles"]):
            found += policy["PolicyDocument"]["Statement"]
    return found


def test_answer_function_may_retrieve_keep_conversations_and_sign_uploads_only(synth: Synthesis) -> None:
    statements = _answer_statements(synth)
    actions = {a for s in statements for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    assert "states:StartSyncExecution" in actions
    assert {"dynamodb:PutItem", "dynamodb:Query"} <= actions
    assert "s3:PutObject" in actions and "s3:GetObject" not in actions and "s3:DeleteObject" not in actions
    put = [s for s in statements if "s3:PutObject" in str(s["Action"])]
    assert put and all("uploads/*" in str(s["Resource"]) for s in put)
    if synth.config.settings.generator.kind == "bedrock":
        assert "bedrock:InvokeModelWithResponseStream" in actions


def test_documents_bucket_accepts_browser_puts_from_the_api_origin_only(synth: Synthesis) -> None:
    rules = [
        b["CorsConfiguration"]["CorsRules"] for b in synth.properties("AWS::S3::Bucket") if "CorsConfiguration" in b
    ]
    assert len(rules) == 1 and len(rules[0]) == 1
    (rule,) = rules[0]
    assert rule["AllowedMethods"] == ["PUT"]
    assert "execute-api" in str(rule["AllowedOrigins"]) and "*" not in [str(o) for o in rule["AllowedOrigins"]]
