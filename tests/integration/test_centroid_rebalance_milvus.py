"""Centroid placement, routing and rebalancing on real Milvus Lite shards with the real model: every chunk sits
exactly on the shards its centroids place it on, overwrites reach every replica, and a rebalance moves chunks
without losing or duplicating any while queries keep finding them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shardrag.bm25 import Bm25Encoder
from shardrag.centroids import CentroidSet
from shardrag.chunking import Chunker, Document
from shardrag.config import EmbeddingSettings, Settings
from shardrag.embedding.onnx import OnnxEmbedder
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.indexing import DocumentIndexer
from shardrag.rebalance import Rebalancer
from shardrag.services import build_centroid_cache, build_placement, build_query_workflow
from shardrag.workflow import QueryWorkflow

from .milvus_shards import accounted_milvus_shards

pytestmark = pytest.mark.integration
SHARDS = 3
TOPICS = {
    "tides": ["Ocean tides rise twice a day.", "The Moon's gravity pulls the sea.", "Spring tides follow full moons."],
    "bees": ["Honeybees dance to share where flowers are.", "A hive keeps one queen bee.", "Bees make honey."],
    "coffee": ["Espresso needs a fine grind.", "Arabica beans grow in highlands.", "Crema forms under pressure."],
    "stars": ["Neutron stars are very dense.", "Red giants swell as they age.", "Supernovae forge heavy elements."],
}
SETTINGS = Settings(
    store={"shard_count": SHARDS, "collection": "c"},
    # Wide replication so that replicas exist in a corpus this small.
    routing={"mode": "centroid", "centroid": {"replicate_margin": 0.08, "max_replicas": 2, "refresh_s": 3600}},
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("centroid-milvus")
    model = OnnxEmbedder.from_settings(EmbeddingSettings())
    shards = accounted_milvus_shards(root, SHARDS)
    artifacts, stats, stores = shards.artifacts, shards.stats, shards.stores
    encoder = Bm25Encoder()

    def build() -> tuple[Any, QueryWorkflow]:
        cache = build_centroid_cache(SETTINGS, artifacts)
        workflow = build_query_workflow(
            SETTINGS,
            embed=lambda text: [float(x) for x in model.embed([text])[0]],
            lexical=lambda text: encoder.query(text, stats.merged()),
            stores=stores.__getitem__,
            make_generator=ExtractiveGenerator,
            centroids=cache,
        )
        return cache, workflow

    cache, _ = build()
    indexer = DocumentIndexer(
        chunker=Chunker(size=128, overlap=32, token_spans=model.token_spans),
        embedder=model,
        store_for=stores.__getitem__,
        shard_count=SHARDS,
        bm25=encoder,
        placement=build_placement(SETTINGS, cache),
    )
    # The first batch (one topic only) bootstraps poor centroids; the rest is placed by them.
    docs = [
        Document(doc_id=f"{t}-{i}", text=text, version="v1")
        for t, texts in TOPICS.items()
        for i, text in enumerate(texts)
    ]
    indexer.run(docs[:3])
    indexer.run(docs[3:])
    yield {"stores": stores, "indexer": indexer, "artifacts": artifacts, "stats": stats, "build": build, "docs": docs}
    shards.close()


def _holdings(stores: list[Any]) -> dict[str, list[int]]:
    held: dict[str, list[int]] = {}
    for shard, store in enumerate(stores):
        for batch in store.scan(100):
            for item in batch:
                held.setdefault(item.chunk.chunk_id, []).append(shard)
    return held


def _vectors(stores: list[Any]) -> dict[str, list[float]]:
    return {item.chunk.chunk_id: item.vector for store in stores for batch in store.scan(100) for item in batch}


def _check_placement(system: dict[str, Any]) -> tuple[CentroidSet, dict[str, list[int]]]:
    stored = system["artifacts"].get("c/centroids.npz")
    centroids = CentroidSet.from_bytes(stored.data)
    held = _holdings(system["stores"])
    vectors = _vectors(system["stores"])
    options = SETTINGS.routing.centroid
    for chunk_id, shards in held.items():
        placed = centroids.place(
            np.asarray(vectors[chunk_id]), replicate_margin=options.replicate_margin, max_replicas=options.max_replicas
        )[0]
        assert sorted(shards) == sorted(placed), chunk_id
    return centroids, held


def _ask(workflow: QueryWorkflow, body: dict[str, Any]) -> dict[str, Any]:
    embedded = json.loads(json.dumps(workflow.embed({"request": body})))
    route = workflow.route({"request": embedded["request"], "vector": embedded["vector"]})
    shards = [
        {
            "shard": i,
            "status": "ok" if route["selected"][f"shard_{i}"] else "skipped",
            **(
                workflow.search({"shard": i, **{k: embedded[k] for k in ("request", "vector", "sparse")}})
                if route["selected"][f"shard_{i}"]
                else {"hits": [], "lexical": [], "took_ms": 0.0}
            ),
        }
        for i in range(SHARDS)
    ]
    return {
        **workflow.fuse_generate({"request": embedded["request"], "shards": shards, "route": route}),
        "route": route,
    }


def test_chunks_sit_on_their_placed_shards_and_a_probed_query_finds_them(system: dict[str, Any]) -> None:
    _, held = _check_placement(system)
    assert len(held) == len(system["docs"])
    assert any(len(shards) == 2 for shards in held.values()), "expected some replicas at this margin"
    _, workflow = system["build"]()
    for mode in ("dense", "hybrid"):
        response = _ask(workflow, {"question": "Honeybees dance to share where flowers are", "mode": mode, "probe": 1})
        assert response["route"]["probed"] == 1
        assert response["hits"][0]["doc_id"] == "bees-0"
        assert len({h["chunk_id"] for h in response["hits"]}) == len(response["hits"])


def test_an_overwrite_reaches_every_replica(system: dict[str, Any]) -> None:
    held = _holdings(system["stores"])
    target = next(cid for cid, shards in held.items() if len(shards) == 2)
    doc_id = target.split("::")[0]
    [result] = system["indexer"].run(
        [Document(doc_id=doc_id, text="Comets have icy tails.", version="v2")],
        previous={doc_id: held[target]},
    )
    ids = [
        item.chunk.chunk_id
        for store in system["stores"]
        for batch in store.scan(100)
        for item in batch
        if item.chunk.doc_id == doc_id
    ]
    assert ids and set(ids) == set(result.ids)  # v2's rows only, wherever they are
    _check_placement(system)


def test_rebalance_moves_chunks_without_loss_or_duplicates_while_answering(system: dict[str, Any]) -> None:
    stores, stats = system["stores"], system["stats"]
    before = _holdings(stores)
    old_cache, old_workflow = system["build"]()
    old_cache.get()
    answers: list[str] = []

    def mid_move(_: CentroidSet) -> None:
        # Between the swap and the deletes, a router still on the old set and one on the new both find it.
        _, new_workflow = system["build"]()
        for workflow in (old_workflow, new_workflow):
            answers.append(
                _ask(workflow, {"question": "Neutron stars are very dense", "mode": "dense"})["hits"][0]["doc_id"]
            )

    cache = build_centroid_cache(SETTINGS, system["artifacts"])
    report = Rebalancer(
        stores=stores.__getitem__,
        shard_count=SHARDS,
        centroids=cache.store,
        settings=SETTINGS.routing.centroid,
        on_swap=mid_move,
    ).run(grace_s=0)
    centroids, after = _check_placement(system)
    assert set(after) == set(before) and report.chunks == len(before)
    assert report.version == centroids.version != report.previous_version
    assert sum(store.count() for store in stores) == sum(len(s) for s in after.values()) == report.stored_after
    assert answers == ["stars-0", "stars-0"]
    # BM25 statistics count the stored rows (replicas included).
    assert stats.merged().documents == report.stored_after
    _, workflow = system["build"]()
    assert (
        _ask(workflow, {"question": "Espresso needs a fine grind", "mode": "hybrid"})["hits"][0]["doc_id"] == "coffee-0"
    )
