"""Hybrid retrieval and tenant scoping on real Milvus Lite shards with the real model: every mode returns only
the caller's tenant's chunks, and BM25 statistics follow writes through the real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shardrag.bm25 import LENGTH_ID, Bm25Encoder
from shardrag.chunking import Chunker, Document
from shardrag.config import EmbeddingSettings, Settings
from shardrag.embedding.onnx import OnnxEmbedder
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.indexing import DocumentIndexer
from shardrag.services import build_query_workflow
from shardrag.workflow import QueryWorkflow

from .milvus_shards import accounted_milvus_shards

pytestmark = pytest.mark.integration
SHARDS = 2
DOCS = [
    ("acme", "acme/tides", "Ocean tides are raised by the gravitational pull of the Moon."),
    ("acme", "acme/bees", "Honeybees tell each other where food is with the waggle dance."),
    ("globex", "globex/tides", "Secret globex memo: tides, the Moon and our quarterly zorblax figures."),
    ("globex", "globex/coffee", "Espresso needs a fine grind and about 25 seconds under pressure."),
]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("hybrid-tenants")
    model = OnnxEmbedder.from_settings(EmbeddingSettings())
    shards = accounted_milvus_shards(root, SHARDS)
    stats, stores = shards.stats, shards.stores
    encoder = Bm25Encoder()
    indexer = DocumentIndexer(
        chunker=Chunker(size=128, overlap=32, token_spans=model.token_spans),
        embedder=model,
        store_for=stores.__getitem__,
        shard_count=SHARDS,
        bm25=encoder,
    )
    indexer.run([Document(doc_id=d, text=t, tenant=tenant, version="v1") for tenant, d, t in DOCS])

    def workflow(tenancy: str) -> QueryWorkflow:
        return build_query_workflow(
            Settings(
                store={"shard_count": SHARDS},
                tenancy={"mode": tenancy},
                ingestion={"tenant_source": "key_prefix" if tenancy == "multi" else "default"},
            ),
            embed=lambda text: [float(x) for x in model.embed([text])[0]],
            # One table for all tenants here (per-tenant tables: test_integrity_faults.py).
            lexical=lambda text, tenant="": encoder.query(text, stats.merged()),
            stores=stores.__getitem__,
            make_generator=ExtractiveGenerator,
        )

    yield {"workflow": workflow, "stats": stats, "stores": stores, "indexer": indexer, "model": model}
    shards.close()


def _ask(workflow: QueryWorkflow, body: dict[str, Any], tenant: str = "") -> dict[str, Any]:
    embedded = json.loads(json.dumps(workflow.embed({"request": body, "caller": {"tenant": tenant}})))
    shards = [
        {
            "shard": i,
            "status": "ok",
            **workflow.search({"shard": i, **{k: embedded[k] for k in ("request", "vector", "sparse")}}),
        }
        for i in range(SHARDS)
    ]
    return workflow.fuse_generate({"request": embedded["request"], "shards": shards})


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_a_tenant_never_sees_another_tenants_chunk(system: dict[str, Any], mode: str) -> None:
    workflow = system["workflow"]("multi")
    for tenant in ("acme", "globex"):
        body = {"question": "What do the Moon and tides have to do with zorblax figures?", "mode": mode, "top_k": 10}
        response = _ask(workflow, body, tenant)
        assert response["hits"], f"{tenant} found nothing in {mode} mode"
        assert {h["doc_id"].split("/")[0] for h in response["hits"]} == {tenant}
        assert all(c["doc_id"].startswith(tenant + "/") for c in response["citations"])


def test_the_same_question_without_tenancy_sees_everything(system: dict[str, Any]) -> None:
    response = _ask(system["workflow"]("single"), {"question": "Moon tides zorblax", "top_k": 10})
    assert {h["doc_id"].split("/")[0] for h in response["hits"]} == {"acme", "globex"}


def test_a_term_only_another_tenant_uses_matches_nothing_lexically(system: dict[str, Any]) -> None:
    response = _ask(system["workflow"]("multi"), {"question": "zorblax", "mode": "bm25", "generate": True}, "acme")
    assert response["hits"] == [] and response["citations"] == []
    assert "zorblax" not in (response["answer"] or "")


def test_bm25_ranks_the_exact_term_match_first_on_the_real_engine(system: dict[str, Any]) -> None:
    response = _ask(system["workflow"]("single"), {"question": "espresso grind", "mode": "bm25", "generate": False})
    assert response["hits"][0]["doc_id"] == "globex/coffee"
    assert response["hits"][0]["score"] > 0


def test_term_statistics_follow_overwrites_and_deletes_on_milvus(system: dict[str, Any]) -> None:
    stats, stores, indexer = system["stats"], system["stores"], system["indexer"]
    assert stats.merged().documents == len(DOCS)  # one chunk each
    indexer.run([Document(doc_id="acme/bees", text="Bumblebees buzz.", tenant="acme", version="v2")])
    merged = stats.merged()
    assert merged.documents == len(DOCS)
    encoder = Bm25Encoder()
    terms = {word: set(encoder.document(word).indices) - {LENGTH_ID} for word in ("waggle", "bumblebees")}
    assert not terms["waggle"] & set(merged.df)
    assert terms["bumblebees"] <= set(merged.df)
    for store in stores:
        store.delete_document("acme/bees")
        store.flush()
    assert stats.merged().documents == len(DOCS) - 1


def test_a_bm25_hit_shows_the_chunk_of_its_unit_that_holds_the_query_terms(system: dict[str, Any]) -> None:
    """BM25 scores a document's unit on its first row; the hit must still show the passage that matched (the
    acceptance check of issue 15 looked for an edited middle paragraph and found only the unit's first chunk)."""
    stores, model = system["stores"], system["model"]
    indexer = DocumentIndexer(  # BM25 over lexical units, as shipped (the fixture's indexer scores chunks)
        chunker=Chunker(size=128, overlap=32, token_spans=model.token_spans),
        embedder=model,
        store_for=stores.__getitem__,
        shard_count=SHARDS,
        bm25=Bm25Encoder(window=1024),
    )
    paragraphs = [f"Paragraph {i} about the slow growth of lichen on granite walls near the coast." for i in range(24)]
    paragraphs[15] = "The quokka of Rottnest Island smiles at visitors."
    indexer.run([Document(doc_id="acme/lichen", text="\n\n".join(paragraphs), tenant="acme", version="v1")])
    try:
        response = _ask(system["workflow"]("single"), {"question": "quokka Rottnest", "mode": "bm25", "top_k": 3})
        top = response["hits"][0]
        assert top["doc_id"] == "acme/lichen" and "quokka" in top["text"], top
        assert top["position"] > 0  # not the unit's first chunk, which holds paragraph 0
    finally:
        for store in stores:
            store.delete_document("acme/lichen")
            store.flush()
