"""Centroid routing wired into the workflow, the indexer and the ingest service (in-memory stores, hashing
embedder, artefacts on a temporary folder)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws
from shardrag.artifacts import FileArtifactStore
from shardrag.bm25 import Bm25Encoder, CorpusStats
from shardrag.centroids import CentroidSet
from shardrag.chunking import Chunker, Document, word_spans
from shardrag.config import CentroidSettings, IngestionSettings, Settings
from shardrag.errors import BadRequest, ConfigurationError
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.identity import object_doc_id
from shardrag.indexing import DocumentIndexer
from shardrag.ingestion import DynamoDbRegistry, IngestService, S3ObjectSource, table_definition
from shardrag.ingestion.events import ObjectEvent, normalise_sequencer
from shardrag.ingestion.registry import DocumentState
from shardrag.placement import CentroidCache, CentroidPlacement, CentroidStore, centroids_name
from shardrag.services import build_centroid_cache, build_placement, build_query_workflow
from shardrag.store.memory import InMemoryVectorStore
from shardrag.store.wrapper import StoreWrapper
from shardrag.visibility import MemoryEpochClock
from shardrag.workflow import QueryWorkflow

SHARDS = 3
TOPICS = {
    "tides": "ocean tides moon gravity water sea coast",
    "bees": "honeybees waggle dance hive pollen flowers nectar",
    "coffee": "espresso grind pressure beans roast crema barista",
}
DOCS = {f"{topic}-{i}": f"{words} note {i}" for topic, words in TOPICS.items() for i in range(3)}


def _settings(dimension: int, **centroid: Any) -> Settings:
    return Settings(
        store={"shard_count": SHARDS, "dimension": dimension},
        routing={"mode": "centroid", "centroid": {"refresh_s": 0.0, **centroid}},
    )


class _System:
    def __init__(self, embedder: Any, root: Path, **centroid: Any) -> None:
        self.settings = _settings(embedder.dimension, **centroid)
        self.cache = build_centroid_cache(self.settings, FileArtifactStore(root))
        self.stores = [InMemoryVectorStore(shard=i, dimension=embedder.dimension) for i in range(SHARDS)]
        self.embedder = embedder
        self.indexer = DocumentIndexer(
            chunker=Chunker(size=50, overlap=10),
            embedder=embedder,
            store_for=self.stores.__getitem__,
            shard_count=SHARDS,
            placement=build_placement(self.settings, self.cache),
        )

    def workflow(self) -> QueryWorkflow:
        stats = CorpusStats()
        for store in self.stores:
            stats.count(store._sparse.values(), +1)
        return build_query_workflow(
            self.settings,
            embed=lambda text: [float(x) for x in self.embedder.embed([text])[0]],
            lexical=lambda text: Bm25Encoder().query(text, stats),
            stores=self.stores.__getitem__,
            make_generator=ExtractiveGenerator,
            centroids=self.cache,
        )

    def holders(self, chunk_id: str) -> list[int]:
        return [i for i, store in enumerate(self.stores) if chunk_id in store._rows]


@pytest.fixture
def system(hashing_embedder: Any, tmp_path: Path) -> _System:
    return _System(hashing_embedder, tmp_path)


def _route(workflow: QueryWorkflow, body: dict[str, Any]) -> dict[str, Any]:
    embedded = workflow.embed({"request": body})
    return workflow.route({"request": embedded["request"], "vector": embedded["vector"]})


def test_the_first_batch_trains_and_stores_the_centroids(system: _System, tmp_path: Path) -> None:
    # GIVEN an empty index in centroid mode: no artefact, so the router searches every shard
    assert system.cache.get() is None
    assert _route(system.workflow(), {"question": "tides"})["shards"] == [0, 1, 2]
    # WHEN the first batch is indexed
    results = system.indexer.run([Document(doc_id=k, text=v, version="1") for k, v in DOCS.items()])
    # THEN the centroids were trained from it and stored beside the index, and every chunk sits exactly on the
    # shards its vector is placed on
    stored = CentroidSet.load(tmp_path / centroids_name("shardrag_chunks"))
    assert stored.shard_count == SHARDS
    options = CentroidSettings()
    for result in results:
        chunk_ids = [cid for store in system.stores for cid in store.chunk_ids(result.doc_id)]
        for chunk_id in set(chunk_ids):
            vector = next(s._rows[chunk_id][1] for s in system.stores if chunk_id in s._rows)
            placed = stored.place(vector, replicate_margin=options.replicate_margin, max_replicas=options.max_replicas)[
                0
            ]
            assert sorted(system.holders(chunk_id)) == sorted(placed)
        assert set(result.shards) == {s for cid in chunk_ids for s in system.holders(cid)}


def test_a_query_probes_its_nearest_shards_and_the_request_can_set_how_many(system: _System) -> None:
    system.indexer.run([Document(doc_id=k, text=v, version="1") for k, v in DOCS.items()])
    workflow = system.workflow()
    centroids = system.cache.get()
    assert centroids is not None
    vector = system.embedder.embed([TOPICS["bees"]])[0]
    nearest = int(np.argmax(centroids.similarities(vector)[0]))
    one = _route(workflow, {"question": TOPICS["bees"], "probe": 1})
    assert one["shards"] == [nearest] and one["probed"] == 1
    assert one["selected"] == {f"shard_{i}": i == nearest for i in range(SHARDS)}
    assert sorted(_route(workflow, {"question": TOPICS["bees"], "probe": SHARDS})["shards"]) == [0, 1, 2]
    adaptive = _route(workflow, {"question": TOPICS["bees"]})
    assert adaptive["shards"][0] == nearest and 1 <= adaptive["probed"] <= CentroidSettings().max_probe


@pytest.mark.parametrize("probe", [0, SHARDS + 1, "2", 1.5, True])
def test_a_probe_out_of_range_or_not_an_integer_is_a_bad_request(system: _System, probe: Any) -> None:
    with pytest.raises(BadRequest, match="probe"):
        system.workflow().embed({"request": {"question": "tides", "probe": probe}})


def test_hash_routing_accepts_a_valid_probe_and_still_searches_every_shard(hashing_embedder: Any) -> None:
    settings = Settings(store={"shard_count": SHARDS, "dimension": hashing_embedder.dimension})
    stores = [InMemoryVectorStore(shard=i, dimension=hashing_embedder.dimension) for i in range(SHARDS)]
    workflow = build_query_workflow(
        settings,
        embed=lambda text: [float(x) for x in hashing_embedder.embed([text])[0]],
        lexical=lambda text: Bm25Encoder().query(text, CorpusStats()),
        stores=stores.__getitem__,
        make_generator=ExtractiveGenerator,
    )
    assert _route(workflow, {"question": "tides", "probe": 1})["shards"] == [0, 1, 2]
    with pytest.raises(BadRequest, match="probe"):
        workflow.embed({"request": {"question": "tides", "probe": SHARDS + 1}})


def test_a_default_probe_above_the_shard_count_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="default_probe"):
        Settings(store={"shard_count": 2}, routing={"mode": "centroid", "centroid": {"default_probe": 3}})


def test_a_writer_that_loses_the_bootstrap_race_places_by_the_winners_centroids(tmp_path: Path) -> None:
    # GIVEN another writer stores its centroids between this writer's check and its own write
    artifacts = FileArtifactStore(tmp_path)
    winner = CentroidSet.from_centroids(np.eye(SHARDS, 4, dtype=np.float32), trained_on=3)

    class Racing(CentroidStore):
        def put(self, centroids: CentroidSet, *, expected_etag: str | None) -> bool:
            assert CentroidStore(artifacts, self.name).put(winner, expected_etag=None)
            return super().put(centroids, expected_etag=expected_etag)

    cache = CentroidCache(Racing(artifacts, "c/centroids.npz"), shard_count=SHARDS, refresh_s=60)
    placement = CentroidPlacement(cache, CentroidSettings(max_replicas=1), SHARDS)
    # WHEN it places a batch whose own training would differ
    vectors = np.array([[0, 0, 0, 1], [0, 0, 1, 0.1], [0, 1, 0, 0.1]], dtype=np.float32)
    shards = placement.place(["a", "b", "c"], vectors)
    # THEN the stored (winning) set is used and kept
    assert cache.get() is not None and cache.get().version == winner.version  # type: ignore[union-attr]
    assert shards == [[0], [2], [1]]


def test_a_centroid_set_for_another_shard_count_is_refused(tmp_path: Path) -> None:
    store = CentroidStore(FileArtifactStore(tmp_path), "c/centroids.npz")
    store.put(CentroidSet.from_centroids(np.eye(2, 4, dtype=np.float32), trained_on=2), expected_etag=None)
    with pytest.raises(ConfigurationError, match="rebalance"):
        CentroidCache(store, shard_count=SHARDS, refresh_s=0).get()


def test_an_overwrite_sweeps_the_shards_the_previous_version_was_on(hashing_embedder: Any, tmp_path: Path) -> None:
    # GIVEN every chunk stored twice (a margin so wide that each has a replica)
    system = _System(hashing_embedder, tmp_path, replicate_margin=2.0, max_replicas=2)
    first = system.indexer.run([Document(doc_id=k, text=v, version="1") for k, v in DOCS.items()])
    assert all(len(r.shards) == 2 for r in first)
    before = {r.doc_id: r.shards for r in first}
    # WHEN a document is rewritten about another topic and told where its previous version was
    [second] = system.indexer.run([Document(doc_id="tides-0", text=TOPICS["coffee"], version="2")], previous=before)
    # THEN no chunk of version 1 is left anywhere
    left = [c for s in system.stores for c, _ in s._rows.values() if c.doc_id == "tides-0"]
    assert left and {c.chunk_id for c in left} == set(second.ids)


def test_registry_items_written_before_centroid_placement_still_name_their_shard() -> None:
    old = DocumentState(doc_id="d", source_key="b/d", shard=2)
    assert old.held_shards() == [2]
    assert DocumentState(doc_id="d", source_key="b/d", shard=2, shards=[2, 0]).held_shards() == [2, 0]


def test_ingestion_overwrites_and_deletes_reach_every_replica(hashing_embedder: Any, tmp_path: Path) -> None:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="docs")
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**table_definition("registry"))
        system = _System(hashing_embedder, tmp_path, replicate_margin=2.0, max_replicas=2)
        settings = IngestionSettings(chunk_size=16, chunk_overlap=4)
        system.indexer = DocumentIndexer(
            chunker=Chunker(size=16, overlap=4, token_spans=word_spans),
            embedder=hashing_embedder,
            store_for=system.stores.__getitem__,
            shard_count=SHARDS,
            placement=build_placement(system.settings, system.cache),
        )
        registry = DynamoDbRegistry(ddb, "registry")
        clock = MemoryEpochClock()
        moments: list[Callable[[], None]] = []

        class Watched(StoreWrapper):
            """A shard that lets the test look at the index before each of its writes."""

            def _look(self) -> None:
                for look in moments:
                    look()

            def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
                self._look()
                return self._inner.delete_chunks(chunk_ids)

            def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
                self._look()
                return self._inner.delete_document(doc_id, keep_version=keep_version)

            def retire(self, chunk_ids: Sequence[str], epoch: int) -> int:
                self._look()
                return self._inner.retire(chunk_ids, epoch)

        watched = [Watched(store) for store in system.stores]
        service = IngestService(
            settings,
            indexer=system.indexer,
            stores=watched.__getitem__,
            shard_count=SHARDS,
            registry=registry,
            objects=S3ObjectSource(s3),
            clock=clock,
        )
        sequence = iter(range(1, 100))

        def event(kind: str, key: str, body: bytes = b"") -> ObjectEvent:
            etag = ""
            if kind == "created":
                etag = s3.put_object(Bucket="docs", Key=key, Body=body)["ETag"].strip('"')
            else:
                s3.delete_object(Bucket="docs", Key=key)
            return ObjectEvent(
                kind=kind,  # type: ignore[arg-type]
                bucket="docs",
                key=key,
                etag=etag,
                size=len(body),
                sequencer=normalise_sequencer(f"{next(sequence):x}"),
                event_name="ObjectCreated:Put" if kind == "created" else "ObjectRemoved:Delete",
            )

        def on(doc_id: str) -> dict[int, set[str]]:
            return {
                i: {c.version for c, _ in s._rows.values() if c.doc_id == doc_id}
                for i, s in enumerate(system.stores)
                if any(c.doc_id == doc_id for c, _ in s._rows.values())
            }

        # GIVEN several documents, every chunk on two shards, the registry recording both
        for key, text in DOCS.items():
            service.run(event("created", f"{key}.txt", text.encode()), owner="w")
        bees = object_doc_id("default", "bees-1.txt")
        state = registry.get_documents([bees])[bees]
        assert len(state.shards) == 2 and set(on(bees)) == set(state.shards)
        # WHEN a document is overwritten about another topic
        service.run(event("created", "bees-1.txt", (TOPICS["tides"] + " rewritten").encode()), owner="w")
        # THEN only the new version is left, on the shards the registry now records
        after = registry.get_documents([bees])[bees]
        assert len(on(bees)) >= 1 and all(len(v) == 1 for v in on(bees).values())
        assert set(on(bees)) == set(after.shards)
        # AND a delete removes it from every replica, in one step for a query (all its rows seen, then none)
        rows = sum(1 for s in system.stores for c, _ in s._rows.values() if c.doc_id == bees)
        seen: list[int] = []
        moments.append(
            lambda: seen.append(
                sum(
                    1
                    for s in system.stores
                    for c, _ in s._rows.values()
                    if c.doc_id == bees and clock.snapshot().sees(c.epoch_from, c.epoch_to)
                )
            )
        )
        service.run(event("removed", "bees-1.txt"), owner="w")
        assert rows > 1 and set(seen) == {rows, 0} and seen == sorted(seen, reverse=True), seen
        assert on(bees) == {}
        assert registry.get_documents([bees])[bees].status == "deleted"


def test_rebalance_records_the_new_shards_in_the_registry_and_keeps_every_chunk(
    hashing_embedder: Any, tmp_path: Path
) -> None:
    from shardrag.rebalance import Rebalancer

    with mock_aws():
        ddb = boto3.client("dynamodb", region_name="us-east-1")
        ddb.create_table(**table_definition("registry"))
        registry = DynamoDbRegistry(ddb, "registry")
        system = _System(hashing_embedder, tmp_path, refresh_s=5.0)
        # GIVEN centroids bootstrapped from one topic, then the whole corpus placed by them
        first = [Document(doc_id=k, text=v, version="1") for k, v in DOCS.items() if k.startswith("tides")]
        rest = [Document(doc_id=k, text=v, version="1") for k, v in DOCS.items() if not k.startswith("tides")]
        results = system.indexer.run(first) + system.indexer.run(rest)
        registry.put_documents(
            DocumentState(doc_id=r.doc_id, source_key=f"b/{r.doc_id}", shard=r.shard, shards=r.shards) for r in results
        )
        before = {cid for s in system.stores for cid in s._rows}
        old = system.cache.get()
        swaps: list[str] = []
        # WHEN the index is rebalanced
        report = Rebalancer(
            stores=system.stores.__getitem__,
            shard_count=SHARDS,
            centroids=system.cache.store,
            settings=system.settings.routing.centroid,
            registry=registry,
            sleep=lambda s: swaps.append(f"slept {s}"),
            on_swap=lambda new: swaps.append(new.version),
        ).run()
        # THEN the same chunks are stored, each exactly on its new shards, the registry says where, and the
        # deletes waited for the routers' refresh period after the swap
        assert {cid for s in system.stores for cid in s._rows} == before and report.chunks == len(before)
        fresh = CentroidStore(FileArtifactStore(tmp_path), system.cache.store.name).get()
        assert fresh is not None and fresh[0].version == report.version and old is not None
        assert report.previous_version == old.version
        assert swaps == [report.version, f"slept {system.settings.routing.centroid.refresh_s}"]
        options = system.settings.routing.centroid
        for cid in before:
            vector = next(s._rows[cid][1] for s in system.stores if cid in s._rows)
            placed = fresh[0].place(
                vector, replicate_margin=options.replicate_margin, max_replicas=options.max_replicas
            )
            assert sorted(system.holders(cid)) == sorted(placed[0])
        states = registry.get_documents(DOCS)
        for doc_id in DOCS:
            holders = {s for cid in before if cid.startswith(doc_id + "::") for s in system.holders(cid)}
            assert set(states[doc_id].shards) == holders
