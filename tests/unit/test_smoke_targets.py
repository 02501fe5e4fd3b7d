"""``make smoke ENV=…`` against AWS, without AWS: the target comes from the stack's outputs (moto's CloudFormation),
requests are SigV4-signed for execute-api, and a standalone store can be stopped and started."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from shardrag_local.smoke import SmokeFailure, Target, deployed_target, run

TEMPLATE = {
    "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
    "Outputs": {
        "ApiUrl": {"Value": "https://abc123.execute-api.us-east-1.amazonaws.com/v1/query"},
        "DocumentsBucket": {"Value": "shardrag-dev-documents"},
        "MilvusInstance": {"Value": "i-0123456789abcdef0"},
    },
}


def _cdk_json(tmp_path: Path, auth: str) -> str:
    environments = {"dev": {"region": "us-east-1", "settings": {}, "deployment": {"api": {"auth": auth}}}}
    path = tmp_path / "cdk.json"
    path.write_text(json.dumps({"context": {"environments": environments}}))
    return str(path)


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        cloudformation = boto3.client("cloudformation", region_name="us-east-1")
        cloudformation.create_stack(StackName="ShardRag-dev", TemplateBody=json.dumps(TEMPLATE))
        yield


def test_iam_target_signs_requests_with_sigv4_for_execute_api(stack: Any, tmp_path: Path) -> None:
    target = deployed_target("dev", config_file=_cdk_json(tmp_path, "iam"))
    assert target.api == "https://abc123.execute-api.us-east-1.amazonaws.com/v1"
    assert target.bucket == "shardrag-dev-documents"
    request = urllib.request.Request(target.api + "/query", data=b"{}", method="POST")
    target.sign(request)
    authorization = request.get_header("Authorization")
    assert re.match(r"AWS4-HMAC-SHA256 Credential=\w+/\d{8}/us-east-1/execute-api/aws4_request, ", authorization)
    assert "host" in authorization.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
    assert request.get_header("X-amz-date")
    assert target.outage is not None  # a standalone host: the smoke test can stop and start it


def test_cognito_target_sends_the_id_token(stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDRAG_ID_TOKEN", "eyJ.id.token")
    target = deployed_target("dev", config_file=_cdk_json(tmp_path, "cognito"))
    request = urllib.request.Request(target.api + "/health")
    target.sign(request)
    assert request.get_header("Authorization") == "eyJ.id.token"


def test_a_failed_check_stops_the_run_with_what_was_seen() -> None:
    class Down(Target):
        def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 60.0) -> tuple[int, Any]:
            return 503, {"error": {"code": "shards_unavailable"}}

    with pytest.raises(SmokeFailure, match="GET /health not ok; saw"):
        run(Down(api="http://x", bucket="b", s3=None), question="q", outage=False)
