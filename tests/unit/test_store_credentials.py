"""Reaching a self-hosted Milvus: the generated root credentials become a token, and a private CA is trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from shardrag.config import IndexSettings, ShardEndpoint
from shardrag.errors import ConfigurationError
from shardrag.secrets import forget_secrets, read_secret
from shardrag.services import _pem_problem
from shardrag.store.milvus import MilvusVectorStore

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class _Secrets:
    """Secrets Manager stub: answers each name from a mutable table, counting calls."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.calls = 0

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 (boto3's argument name)
        self.calls += 1
        return {"SecretString": self.values[SecretId]}


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    forget_secrets()


def test_generated_database_credentials_become_a_milvus_token() -> None:
    # GIVEN the JSON CloudFormation generates (SecretStringTemplate + GenerateStringKey)
    client = _Secrets({"root": '{"username": "root", "password": "s3cret"}'})
    # THEN the token is user:password
    assert read_secret("root", client=client) == "root:s3cret"


def test_an_explicit_token_wins_over_username_and_password() -> None:
    client = _Secrets({"t": '{"token": "abc", "username": "root", "password": "x"}'})
    assert read_secret("t", client=client) == "abc"


def test_an_unusable_value_is_an_error_and_is_read_again_next_time() -> None:
    # GIVEN a CA secret still holding the stack's placeholder
    client = _Secrets({"ca": "RandomPlaceholder"})
    with pytest.raises(ConfigurationError, match="holds no PEM certificate"):
        read_secret("ca", client=client, what="Milvus CA certificate", check=_pem_problem)
    # WHEN the host has written its certificate
    client.values["ca"] = PEM
    # THEN the next call reads it (the placeholder was not cached)
    assert read_secret("ca", client=client, check=_pem_problem) == PEM.strip()
    assert client.calls == 2


def test_a_private_ca_is_passed_to_pymilvus_as_its_root_certificates(tmp_path: Path) -> None:
    endpoint = ShardEndpoint(uri="https://10.0.0.5:19530", server_name="milvus.shardrag.internal")
    store = MilvusVectorStore(endpoint, shard=0, dimension=8, index=IndexSettings(), token="root:x", ca_pem=PEM)
    options = store._tls_options()
    assert options["secure"] is True
    assert options["server_name"] == "milvus.shardrag.internal"
    assert Path(options["server_pem_path"]).read_text() == PEM


def test_no_ca_means_the_system_roots() -> None:
    store = MilvusVectorStore(
        ShardEndpoint(uri="https://in03.zillizcloud.com"), shard=0, dimension=8, index=IndexSettings()
    )
    assert store._tls_options() == {}


def test_one_endpoint_for_every_shard_gives_one_collection_per_shard() -> None:
    from shardrag.config import StoreSettings

    shared = ShardEndpoint(uri="https://10.0.0.5:19530", token_secret="arn:root", ca_secret="arn:ca", server_name="m")
    endpoints = StoreSettings(shard_count=3, endpoint=shared).endpoints(Path())
    assert [e.collection for e in endpoints] == [
        "shardrag_chunks_shard0",
        "shardrag_chunks_shard1",
        "shardrag_chunks_shard2",
    ]
    assert {(e.uri, e.token_secret, e.ca_secret, e.server_name) for e in endpoints} == {
        ("https://10.0.0.5:19530", "arn:root", "arn:ca", "m")
    }


def test_shards_and_a_shared_endpoint_are_exclusive() -> None:
    from pydantic import ValidationError
    from shardrag.config import StoreSettings

    with pytest.raises(ValidationError, match="exclusive"):
        StoreSettings(shard_count=1, shards=(ShardEndpoint(uri="https://a"),), endpoint=ShardEndpoint(uri="https://b"))
