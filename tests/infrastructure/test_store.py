"""The vector store and the network the stack provisions: template assertions (by properties, never logical ids),
the host's bootstrap script (shellcheck, and the Milvus configuration it writes), and the endpoint table."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cdk_synthesis import ROOT, Synthesis
from shardrag_cdk.layout import FUNCTION_AWS_SERVICES, GATEWAY_ENDPOINT_SERVICES, vpc_endpoint_services
from shardrag_cdk.milvus_standalone import AMI_PARAMETER, BOOTSTRAP_SCRIPT, SERVER_NAME
from shardrag_cdk.store_config import MILVUS_PORT, StandaloneStoreConfig


def _join(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        return value["Fn::Join"][0].join(_join(p) for p in value["Fn::Join"][1])
    if isinstance(value, dict) and "Fn::Base64" in value:
        return _join(value["Fn::Base64"])
    return "<ref>"


def _host(synth: Synthesis) -> dict[str, Any]:
    (instance,) = synth.properties("AWS::EC2::Instance")
    return instance


def _security_group(synth: Synthesis, description_start: str) -> tuple[str, dict[str, Any]]:
    (found,) = [
        (k, v["Properties"])
        for k, v in synth.resources("AWS::EC2::SecurityGroup").items()
        if v["Properties"]["GroupDescription"].startswith(description_start)
    ]
    return found


def test_standalone_host_is_one_graviton_instance_with_an_encrypted_data_volume(synth: Synthesis) -> None:
    store = synth.config.deployment.store
    assert isinstance(store, StandaloneStoreConfig)
    host = _host(synth)
    assert host["InstanceType"] == store.instance_type
    # Resolved by EC2 at launch: a new AMI never replaces the host (and its volume) on a later deployment.
    assert host["ImageId"] == f"resolve:ssm:{AMI_PARAMETER}"
    volumes = {m["DeviceName"]: m["Ebs"] for m in host["BlockDeviceMappings"]}
    assert volumes["/dev/sdf"]["VolumeSize"] == store.data_volume_gib
    assert all(v["Encrypted"] is True and v["VolumeType"] == "gp3" for v in volumes.values())
    retain = synth.config.deployment.removal_policy == "retain"
    assert volumes["/dev/sdf"]["DeleteOnTermination"] is (not retain)
    assert host.get("DisableApiTermination", False) is retain
    # IMDSv2 only, with the two hops a container needs to reach it (Milvus' S3 client uses the instance role).
    assert host["MetadataOptions"]["HttpTokens"] == "required"
    assert host["MetadataOptions"]["HttpPutResponseHopLimit"] == 2


def test_host_user_data_runs_the_bootstrap_script_with_its_settings(synth: Synthesis) -> None:
    user_data = _join(_host(synth)["UserData"])
    store = synth.config.deployment.store
    assert isinstance(store, StandaloneStoreConfig)
    assert f"export MILVUS_IMAGE='milvusdb/milvus:{store.milvus_version}'" in user_data
    assert f"export SERVER_NAME='{SERVER_NAME}'" in user_data
    for name in ("MILVUS_BUCKET", "ROOT_SECRET_ID", "CA_SECRET_ID"):
        assert f"export {name}='<ref>'" in user_data
    # The stack's Region: a reference when the environment names none, the name when it does.
    assert f"export AWS_REGION='{synth.config.region or '<ref>'}'" in user_data
    assert BOOTSTRAP_SCRIPT.read_text().strip() in user_data
    assert user_data.rstrip().endswith("/usr/local/sbin/milvus-host start")
    assert len(user_data.encode()) < 16 * 1024  # EC2's user data limit


def test_milvus_port_is_open_to_the_functions_only(synth: Synthesis) -> None:
    functions_sg, _ = _security_group(synth, "ShardRAG functions")
    host_sg, host = _security_group(synth, "ShardRAG Milvus host")
    assert "SecurityGroupIngress" not in host  # no CIDR rule, from anywhere
    ingress = [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()]
    to_host = [r for r in ingress if r["GroupId"] == {"Fn::GetAtt": [host_sg, "GroupId"]}]
    assert to_host == [
        {
            "IpProtocol": "tcp",
            "FromPort": MILVUS_PORT,
            "ToPort": MILVUS_PORT,
            "SourceSecurityGroupId": {"Fn::GetAtt": [functions_sg, "GroupId"]},
            "GroupId": {"Fn::GetAtt": [host_sg, "GroupId"]},
            "Description": "Milvus from the ShardRAG functions",
        }
    ]


def test_host_recovers_and_reboots_itself(synth: Synthesis) -> None:
    actions = {}
    for alarm in synth.properties("AWS::CloudWatch::Alarm"):
        if alarm.get("Namespace") == "AWS/EC2":
            actions[alarm["MetricName"]] = _join(alarm["AlarmActions"][0])
            assert alarm["Period"] == 60 and alarm["EvaluationPeriods"] == 2
    assert actions["StatusCheckFailed_System"].endswith(":ec2:recover")
    assert actions["StatusCheckFailed_Instance"].endswith(":ec2:reboot")


def test_root_password_is_generated_and_the_host_reads_it_and_writes_the_ca(synth: Synthesis) -> None:
    secrets = synth.resources("AWS::SecretsManager::Secret")
    generated = {k: v["Properties"]["GenerateSecretString"] for k, v in secrets.items()}
    (root,) = [k for k, g in generated.items() if g.get("GenerateStringKey") == "password"]
    assert json.loads(generated[root]["SecretStringTemplate"]) == {"username": "root"}
    assert generated[root]["ExcludePunctuation"] is True  # it goes into YAML unquoted-safe and into a token
    (ca,) = set(secrets) - {root}
    host_role = _host_role(synth)
    granted = _granted(synth, host_role)
    assert {"secretsmanager:GetSecretValue"} <= granted[root]
    assert "secretsmanager:PutSecretValue" in granted[ca]
    assert "secretsmanager:PutSecretValue" not in granted[root]


def _host_role(synth: Synthesis) -> str:
    (profile,) = synth.properties("AWS::IAM::InstanceProfile")
    (role,) = profile["Roles"]
    return str(role["Ref"])


def _granted(synth: Synthesis, role: str) -> dict[str, set[str]]:
    """Actions granted to ``role``, by the logical id each statement's resource references."""
    found: dict[str, set[str]] = {}
    for policy in synth.properties("AWS::IAM::Policy"):
        if {"Ref": role} not in policy["Roles"]:
            continue
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            text = json.dumps(statement["Resource"])
            for ref in re.findall(r'"(?:Ref|Fn::GetAtt)": \[?"([A-Za-z0-9]+)"', text):
                found.setdefault(ref, set()).update(actions)
    return found


def test_host_reaches_its_bucket_through_the_instance_role_only(synth: Synthesis) -> None:
    granted = _granted(synth, _host_role(synth))
    buckets = set(synth.resources("AWS::S3::Bucket"))
    (bucket,) = set(granted) & buckets
    assert granted[bucket] >= {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}
    # No access key anywhere: the configuration says useIAM (checked on the script below), the template has none.
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(synth.template)
    assert not synth.resources("AWS::IAM::AccessKey")


def test_network_has_gateway_endpoints_and_the_interface_endpoints_the_functions_need(synth: Synthesis) -> None:
    network = synth.config.deployment.network
    assert network is not None
    assert not synth.resources("AWS::EC2::NatGateway")  # no deployment needs a NAT unless configured
    endpoints = synth.properties("AWS::EC2::VPCEndpoint")
    services = {_join(e["ServiceName"]).rsplit(".", 1)[-1]: e for e in endpoints}
    gateway, interface = vpc_endpoint_services(network.functions)
    assert {s for s, e in services.items() if e.get("VpcEndpointType", "Gateway") == "Gateway"} == set(gateway)
    assert {s for s, e in services.items() if e.get("VpcEndpointType") == "Interface"} == set(interface)
    for name in interface:
        assert services[name]["PrivateDnsEnabled"] is True
    # Gateway endpoints sit on the functions' route tables.
    for name in gateway:
        assert len(services[name]["RouteTableIds"]) >= len(network.functions and [1])


def test_interface_endpoints_admit_https_from_the_functions_and_the_host(synth: Synthesis) -> None:
    endpoint_sg, _ = _security_group(synth, "ShardRAG interface endpoints")
    functions_sg, _ = _security_group(synth, "ShardRAG functions")
    host_sg, _ = _security_group(synth, "ShardRAG Milvus host")
    sources = {
        r["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0]
        for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": [endpoint_sg, "GroupId"]} and r["Properties"]["FromPort"] == 443
    }
    assert sources == {functions_sg, host_sg}


def test_endpoint_table_derives_the_endpoints() -> None:
    gateway, interface = vpc_endpoint_services(("shard_search", "ingest"))
    assert gateway == ("dynamodb", "s3")
    # SQS: ingestion hands the rest of a large object to a fresh invocation through its queue.
    assert interface == ("secretsmanager", "sqs")
    # FuseAndGenerate in the VPC would need Bedrock's endpoints too.
    _, with_fuse = vpc_endpoint_services(("shard_search", "ingest", "fuse_generate"))
    assert with_fuse == ("bedrock-agent-runtime", "bedrock-runtime", "secretsmanager", "sqs")


def test_endpoint_table_lists_every_boto3_client_the_code_creates() -> None:
    """A new boto3 client in the core library or a handler must appear in FUNCTION_AWS_SERVICES, or the VPC functions
    would hang on it (no endpoint, no NAT) and the trimmed botocore would not know it."""
    pattern = re.compile(r"""boto3\.client\(\s*["']([a-z0-9-]+)["']""")
    used: set[str] = set()
    for folder in (ROOT / "layers" / "core" / "python" / "shardrag", ROOT / "functions"):
        for path in folder.rglob("*.py"):
            used |= set(pattern.findall(path.read_text()))
    assert used, "the scan found no boto3 client at all: the pattern is stale"
    listed = {service for services in FUNCTION_AWS_SERVICES.values() for service in services}
    assert used <= listed, f"boto3 clients not in layout.FUNCTION_AWS_SERVICES: {sorted(used - listed)}"
    assert listed >= GATEWAY_ENDPOINT_SERVICES


def test_a_template_with_stand_in_layers_cannot_be_deployed(synth: Synthesis) -> None:
    """The tests synthesise with stand-in layers; CloudFormation evaluates this rule before creating anything."""
    rules = [
        rule
        for rule in synth.template.get("Rules", {}).values()
        if "stand-ins" in rule["Assertions"][0].get("AssertDescription", "")
    ]
    (rule,) = rules
    (assertion,) = rule["Assertions"]
    parameter = assertion["Assert"]["Fn::Equals"][0]["Ref"]
    default = synth.template["Parameters"][parameter]["Default"]
    assert assertion["Assert"]["Fn::Equals"][1] != default  # false unless someone overrides it on purpose
    assert "make lambda-assets" in assertion["AssertDescription"]


# --- the host's bootstrap script ------------------------------------------------------------------------------

SHELLCHECK = shutil.which("shellcheck")


def test_bootstrap_script_passes_shellcheck() -> None:
    assert SHELLCHECK, "shellcheck is not installed: run `make tools` (apt-get install shellcheck)"
    result = subprocess.run(
        [SHELLCHECK, "--severity=style", str(BOOTSTRAP_SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _render(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(BOOTSTRAP_SCRIPT), "render-config"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"], **env},
    )


def test_bootstrap_writes_a_milvus_configuration_with_auth_tls_and_s3_through_the_role() -> None:
    result = _render(MILVUS_BUCKET="shardrag-milvus-objects", AWS_REGION="eu-west-1", ROOT_PASSWORD="Abc123xyz")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["common"]["security"] == {
        "authorizationEnabled": True,
        "defaultRootPassword": "Abc123xyz",
        "tlsMode": 1,  # one-way TLS: the server proves itself, clients authenticate with the token
    }
    assert config["common"]["storageType"] == "remote"
    assert config["tls"] == {
        "serverPemPath": "/milvus/tls/server.pem",
        "serverKeyPath": "/milvus/tls/server.key",
        "caPemPath": "/milvus/tls/ca.pem",
    }
    assert config["minio"] == {
        "address": "s3.eu-west-1.amazonaws.com",
        "port": 443,
        "useSSL": True,
        "bucketName": "shardrag-milvus-objects",
        "rootPath": "milvus",
        "useIAM": True,
        "cloudProvider": "aws",
        "region": "eu-west-1",
        "useVirtualHost": True,
    }
    assert "accessKeyID" not in result.stdout and "secretAccessKey" not in result.stdout


def test_bootstrap_refuses_to_render_without_its_settings() -> None:
    result = _render(MILVUS_BUCKET="b", AWS_REGION="us-east-1")
    assert result.returncode == 2
    assert "missing environment variable ROOT_PASSWORD" in result.stderr


def test_bootstrap_script_is_what_the_host_runs() -> None:
    # The file the tests check is the one the stack embeds (not a copy that could drift).
    assert Path(ROOT / "cdk" / "shardrag_cdk" / "milvus_host.sh") == BOOTSTRAP_SCRIPT
    assert BOOTSTRAP_SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.parametrize("instance_type", ["t4g.medium", "m7g.large", "c7gn.2xlarge", "r8g.metal"])
def test_graviton_instance_types_are_accepted(instance_type: str) -> None:
    assert StandaloneStoreConfig(instance_type=instance_type).instance_type == instance_type


def test_shard_wiring_that_would_overflow_lambdas_environment_is_refused(
    synthesised: dict[str, Synthesis], tmp_path: Path
) -> None:
    """One endpoint per shard is written once per shard: 64 of them would exceed Lambda's 4 KB of environment."""
    import copy

    from cdk_synthesis import CDK_CONTEXT, synthesise
    from shardrag_cdk.config import DeploymentConfigError

    environments = copy.deepcopy(CDK_CONTEXT["environments"])
    dev = environments["dev"]
    dev["settings"]["store"]["shard_count"] = 64
    endpoints = [
        {"uri": f"https://milvus-{i}.corp.example:19530", "token_secret": f"milvus/shard-{i}"} for i in range(64)
    ]
    dev["deployment"]["store"] = {"kind": "external", "endpoints": endpoints}
    with pytest.raises(DeploymentConfigError, match=r"environment would take up to \d+ bytes once resolved"):
        synthesise("dev", tmp_path, {"environments": environments})


def test_one_store_for_all_shards_fits_any_shard_count(synthesised: dict[str, Synthesis], tmp_path: Path) -> None:
    import copy

    from cdk_synthesis import CDK_CONTEXT, synthesise

    environments = copy.deepcopy(CDK_CONTEXT["environments"])
    environments["dev"]["settings"]["store"]["shard_count"] = 64
    synth = synthesise("dev", tmp_path, {"environments": environments, "shardrag:nag": "false"})
    assert len(synth.resources("AWS::EC2::Instance")) == 1
