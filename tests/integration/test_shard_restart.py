"""A shard process restarted under a live client: searches fail fast while it is down and recover on their own
once it is back (a restarted Milvus comes back with its collection released; the client must reconnect and load
it), without anyone resetting the client, as query workers never hear of a restart.

The bound on recovery is a generous wait on a mechanism, not a timing assertion.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from shardrag.config import IndexSettings, ShardEndpoint
from shardrag.records import Chunk, EmbeddedChunk, SearchRequest

pytestmark = pytest.mark.integration

DIMENSION = 8


def test_a_restarted_shard_is_searched_again_without_outside_help(tmp_path: Path) -> None:
    from shardrag.store.milvus import MilvusVectorStore
    from shardrag_local.shard_servers import ShardProcess, free_port

    server = ShardProcess(0, tmp_path / "shard-0.db", free_port(), tmp_path / "shard-0.log")
    server.start(60)
    store = MilvusVectorStore(
        ShardEndpoint(uri=server.uri, collection="c"), shard=0, dimension=DIMENSION, index=IndexSettings()
    )
    try:
        vector = [1.0] + [0.0] * (DIMENSION - 1)
        store.upsert([EmbeddedChunk(chunk=Chunk(chunk_id="a#0", doc_id="a", text="alpha"), vector=vector)])
        store.flush()
        request = SearchRequest(vector=vector, top_k=1, timeout_s=5.0)
        assert [h.chunk_id for h in store.search(request)] == ["a#0"]

        server.stop()
        with pytest.raises(Exception):  # noqa: B017 - whatever the client raises, the shard is down
            store.search(request)

        server.start(60)
        deadline, found = time.monotonic() + 30, None
        while found is None and time.monotonic() < deadline:
            try:
                found = [h.chunk_id for h in store.search(request)]
            except Exception:
                time.sleep(0.2)
        assert found == ["a#0"]
    finally:
        store.close()
        server.stop()
