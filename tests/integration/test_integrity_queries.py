"""The query-side integrity defects on real Milvus Lite shards with the term accounting on: text kept through
fusion, reranking in hybrid mode, hostile filters answered as the caller's error without blaming a shard, and
per-tenant BM25 statistics."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from shardrag.bm25 import Bm25Encoder
from shardrag.chunking import Chunker, Document, word_spans
from shardrag.config import Settings
from shardrag.embedding.hashing import HashingEmbedder
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.indexing import DocumentIndexer
from shardrag.records import Hit
from shardrag.rerank import RerankFailed
from shardrag.services import build_query_workflow
from shardrag.workflow import QueryWorkflow

from .milvus_shards import AccountedShards, accounted_milvus_shards

pytestmark = pytest.mark.integration
SHARDS = 4
EMBEDDER = HashingEmbedder(384)
TOPICS = ["tide moon ocean", "bee waggle dance", "espresso grind pressure", "basalt column lava", "heron estuary"]


def _corpus(n: int, tenant: str = "default") -> list[Document]:
    docs = []
    for i in range(n):
        a, b = TOPICS[i % len(TOPICS)], TOPICS[(i * 3 + 1) % len(TOPICS)]
        text = f"Note {i} on {a}. It also mentions {b} and the number {i % 7}. " * (1 + i % 3)
        docs.append(Document(doc_id=f"{tenant}-{i}", external_id=f"{tenant}/{i}.txt", text=text, tenant=tenant))
    return docs


def _indexer(stores: Sequence[Any]) -> DocumentIndexer:
    return DocumentIndexer(
        chunker=Chunker(size=24, overlap=6, token_spans=word_spans),
        embedder=EMBEDDER,
        store_for=lambda i: stores[i],
        shard_count=SHARDS,
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AccountedShards]:
    shards = accounted_milvus_shards(tmp_path_factory.mktemp("integrity-queries"), SHARDS)
    _indexer(shards.stores).run(_corpus(160))
    yield shards
    shards.close()


class _Reverse:
    """A reranker that, like Bedrock Rerank, refuses candidates without text."""

    name = "reverse"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def run(self, question: str, hits: Sequence[Hit], top_n: int) -> list[Hit]:
        if any(not h.text.strip() for h in hits):
            raise RerankFailed("a candidate has no text", reason="no_text")
        self.seen.append(len(hits))
        return list(reversed(hits))[:top_n]


def _workflow(shards: AccountedShards, **kwargs: Any) -> QueryWorkflow:
    settings = Settings(store={"shard_count": SHARDS, "dimension": EMBEDDER.dimension}, **kwargs.pop("settings", {}))
    encoder = Bm25Encoder()
    return build_query_workflow(
        settings,
        embed=lambda text: [float(x) for x in EMBEDDER.embed([text])[0]],
        lexical=lambda text, tenant="": encoder.query(text, shards.stats.merged(tenant)),
        stores=shards.stores.__getitem__,
        make_generator=ExtractiveGenerator,
        **kwargs,
    )


def _ask(workflow: QueryWorkflow, body: dict[str, Any], tenant: str = "") -> dict[str, Any]:
    embedded = json.loads(json.dumps(workflow.embed({"request": body, "caller": {"tenant": tenant}})))
    results = [
        {
            "shard": i,
            "status": "ok",
            **workflow.search({"shard": i, **{k: embedded[k] for k in ("request", "vector", "sparse")}}),
        }
        for i in range(SHARDS)
    ]
    return workflow.fuse_generate(json.loads(json.dumps({"request": embedded["request"], "shards": results})))


# Common words pull the dense ranking one way, a rare number the BM25 ranking another: many chunks sit high in one
# modality's list (with text) and deep in the other's (ids only).
QUESTIONS = [f"{TOPICS[i % 5]} {TOPICS[(i + 2) % 5]} note mentions number {i % 7} also" for i in range(12)]


# -- defect 3: a text-less dense copy overwrote the lexical copy that carried text -------------------------------
def test_every_hybrid_hit_keeps_its_text(shared: AccountedShards) -> None:
    workflow = _workflow(shared)
    blank = 0
    for question in QUESTIONS:
        response = _ask(workflow, {"question": question, "top_k": 10, "mode": "hybrid"})
        assert len(response["hits"]) == 10
        blank += sum(1 for h in response["hits"] if not h["text"])
    assert blank == 0


# -- defect 4: with the default hybrid mode the reranker saw blank candidates and never ran -----------------------
def test_hybrid_answers_are_reranked(shared: AccountedShards) -> None:
    reranker = _Reverse()
    workflow = _workflow(
        shared, settings={"rerank": {"kind": "bedrock", "max_candidates": 100}}, make_reranker=lambda: reranker
    )
    for question in QUESTIONS[:4]:
        response = _ask(workflow, {"question": question, "top_k": 5})
        assert response["rerank"]["status"] == "ok", response["rerank"]
        assert response["rerank"]["candidates"] > 5
    assert reranker.seen


# -- defect 11: one tenant's uploads moved another tenant's BM25 scores ------------------------------------------
def test_a_tenants_scores_do_not_move_when_another_tenant_adds_documents(tmp_path: Path) -> None:
    shards = accounted_milvus_shards(tmp_path, SHARDS, per_tenant=True)
    try:
        indexer = _indexer(shards.stores)
        indexer.run(_corpus(30, "acme"))
        workflow = _workflow(
            shards, settings={"tenancy": {"mode": "multi"}, "ingestion": {"tenant_source": "key_prefix"}}
        )
        body = {"question": "espresso grind pressure and the heron", "mode": "bm25", "top_k": 10, "generate": False}
        before = [(h["chunk_id"], h["score"]) for h in _ask(workflow, body, "acme")["hits"]]
        # Another tenant uploads many documents that use the same words.
        indexer.run(_corpus(120, "globex"))
        after = [(h["chunk_id"], h["score"]) for h in _ask(workflow, body, "acme")["hits"]]
        assert before and after == before
        assert _ask(workflow, body, "globex")["hits"]  # and globex's own statistics serve globex
    finally:
        shards.close()


def test_multi_tenant_mode_refuses_to_file_every_document_under_one_tenant() -> None:
    from shardrag.config import parse_settings
    from shardrag.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="tenant_source"):
        parse_settings({"tenancy": {"mode": "multi"}})
    assert parse_settings({"tenancy": {"mode": "multi"}, "ingestion": {"tenant_source": "metadata"}})


# -- defect 5 and 10, end to end: the local runtime's state machine and API mapping -------------------------------
def test_a_filter_with_control_characters_is_answered_not_blamed_on_the_shards(local_runtime: Any) -> None:
    for prefix in ["sample/\nx", "sample/\r\n", "s3://shardrag-documents/sample/\t", 'a"\\\n']:
        status, body = local_runtime.execute({"question": "tides", "filters": {"source_prefix": prefix}})
        assert status == 200, body
        assert body["shards"]["failed"] == [] and not body["degraded"]


def test_oversized_filters_are_a_400_in_the_runtime(local_runtime: Any) -> None:
    values = ["ö" * 1000 for _ in range(16)]
    status, body = local_runtime.execute({"question": "tides", "filters": {"doc_id": values}})
    assert status == 400 and "too large" in body["error"]["message"]


# -- defect 5, at the store boundary: any string a key or filter can hold is one exact literal -----------------
def test_filter_literals_match_exactly_what_was_stored_whatever_it_contains(tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from shardrag.config import IndexSettings, ShardEndpoint
    from shardrag.filters import FilterCompiler
    from shardrag.records import Chunk, EmbeddedChunk, SearchRequest
    from shardrag.store.milvus import MilvusVectorStore

    store = MilvusVectorStore(
        ShardEndpoint(uri=str(tmp_path / "literals.db"), collection="c"),
        shard=0,
        dimension=8,
        index=IndexSettings(),
    )
    compiler = FilterCompiler()
    vector = [1.0] + [0.0] * 7
    hostile = st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40
    ) | st.sampled_from(['"', "\\", '\\\\"', "\n", "\r\n", "a\tb", "%", "_", "\\%", '" or 1==1 or "'])

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(value=hostile, other=hostile)
    def check(value: str, other: str) -> None:
        rows = []
        for n, text in enumerate({value, value + other, other}):
            chunk = Chunk(chunk_id=f"c{n}", doc_id=f"d{n}", text="t", source=text, external_id=text)
            rows.append(EmbeddedChunk(chunk=chunk, vector=vector))
        store.delete_chunks(store._query_ids('chunk_id != ""'))
        store.upsert(rows)
        for field, expected in (("doc_id", {value}), ("source_prefix", {value, value + other})):
            expr = compiler.run({field: value})
            hits = store.search(SearchRequest(vector=vector, top_k=10, filter_expr=expr))
            found = {h.external_id for h in hits}
            wanted = {r.chunk.external_id for r in rows if r.chunk.external_id in expected}
            if field == "source_prefix":
                wanted = {r.chunk.external_id for r in rows if r.chunk.source.startswith(value)}
            assert found == wanted, (field, value, other, expr)

    try:
        check()
    finally:
        store.close()
