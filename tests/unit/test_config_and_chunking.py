from __future__ import annotations

import pytest
from shardrag.chunking import Chunker, Document, chunk_id
from shardrag.config import load_settings, parse_settings
from shardrag.errors import ConfigurationError


def test_defaults_are_four_embedded_shards() -> None:
    settings = load_settings({})
    endpoints = settings.shard_endpoints()
    assert len(endpoints) == 4 and all(e.is_lite for e in endpoints)
    assert len({e.uri for e in endpoints}) == 4


@pytest.mark.parametrize(
    "raw",
    [
        {"store": {"shard_count": 0}},
        {"store": {"shard_count": 2, "shards": [{"uri": "http://a:19530"}]}},
        {"store": {"collection": "bad-name!"}},
        {"generator": {"kind": "gpt"}},
        {"unknown_section": {}},
        "{not json",
    ],
)
def test_bad_settings_fail_with_a_clear_error(raw: object) -> None:
    with pytest.raises(ConfigurationError, match="invalid ShardRAG settings"):
        parse_settings(raw)  # type: ignore[arg-type]


def test_environment_overrides_the_file_values() -> None:
    settings = load_settings({"SHARDRAG_SETTINGS": '{"store": {"shard_count": 2}}', "SHARDRAG_DATA_DIR": "/tmp/x"})
    assert settings.store.shard_count == 2 and settings.data_dir == "/tmp/x"


def test_chunks_are_token_windows_with_overlap_and_deterministic_ids() -> None:
    words = [f"w{i}" for i in range(25)]
    doc = Document(doc_id="d", text=" ".join(words), title="T", version="7")
    chunks = Chunker(size=10, overlap=3).run(doc)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w7", "w14", "w21"]
    assert chunks[-1].text.split()[-1] == "w24"
    assert all(len(c.text.split()) <= 10 for c in chunks)
    assert [c.chunk_id for c in chunks] == [chunk_id("d", "7", i) for i in range(4)]
    assert chunks == Chunker(size=10, overlap=3).run(doc)
    assert Chunker(size=10, overlap=3).embedding_text(chunks[0]).startswith("T\n")


def test_empty_document_has_no_chunks() -> None:
    assert Chunker().run(Document(doc_id="d", text="  \n ")) == []
