"""Where chunks are stored: the write-path half of routing.

``hash`` placement keeps every chunk of a document on the shard its id hashes to. ``centroid`` placement stores
each chunk on the shard of its nearest k-means centroid, plus the shards whose centroids are almost as near
(``shardrag.centroids``). The centroids are an index artefact (``<collection>/centroids.npz`` in the
:class:`~shardrag.artifacts.ArtifactStore`, beside the BM25 statistics): chunks were placed by exactly those
centroids, so queries are routed by them too.

Bootstrap: an empty index has no centroids. The first ingestion batch in centroid mode trains them from its own
chunk embeddings and writes the artefact only if it is still absent (``expected_etag=None``); a writer that loses
that race loads and uses the winner's set, so every chunk is placed by the one stored set. A first batch is a
poor sample of a corpus that grows later: ``shardrag rebalance`` retrains on a sample of the stored vectors and
moves the chunks (``shardrag.rebalance``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from shardrag.artifacts import ArtifactStore
from shardrag.centroids import CentroidSet
from shardrag.config import CentroidSettings
from shardrag.errors import ConfigurationError
from shardrag.sharding import shard_for

__all__ = [
    "CentroidCache",
    "CentroidPlacement",
    "CentroidStore",
    "HashPlacement",
    "Placement",
    "centroids_name",
    "train_for_shards",
]


def centroids_name(collection: str) -> str:
    """The centroid artefact's name (beside ``<collection>/bm25/…``)."""
    return f"{collection}/centroids.npz"


def train_for_shards(sample: npt.ArrayLike, shard_count: int, settings: CentroidSettings) -> CentroidSet:
    """One centroid per shard, trained on ``sample``. A sample with fewer rows than shards (a first batch of one
    short document) is padded with seeded random unit rows: their centroids start out (almost) empty and a
    rebalance gives them their share later."""
    rows = np.asarray(sample, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError("need at least one vector to train centroids")
    if rows.shape[0] < shard_count:
        rng = np.random.default_rng(settings.seed)
        pad = rng.normal(size=(shard_count - rows.shape[0], rows.shape[1])).astype(np.float32)
        rows = np.vstack([rows, pad])
    return CentroidSet.train(
        rows, shard_count, seed=settings.seed, iterations=settings.iterations, balance=settings.balance
    )


class CentroidStore:
    """The centroid artefact: read, write-if-absent, compare-and-swap."""

    def __init__(self, artifacts: ArtifactStore, name: str) -> None:
        self._artifacts = artifacts
        self.name = name

    def get(self) -> tuple[CentroidSet, str] | None:
        """The stored set and its version tag, or ``None`` before the first ingestion."""
        found = self._artifacts.get(self.name)
        if found is None:
            return None
        return CentroidSet.from_bytes(found.data), found.etag

    def put(self, centroids: CentroidSet, *, expected_etag: str | None) -> bool:
        """Write if the stored tag is still ``expected_etag`` (``None``: only if absent)."""
        return self._artifacts.put(self.name, centroids.to_bytes(), expected_etag=expected_etag)

    def bootstrap(self, train: Callable[[], CentroidSet]) -> CentroidSet:
        """The stored set; if there is none, ``train()`` one and store it unless another writer got there first
        (then the winner's set is returned)."""
        found = self.get()
        if found is not None:
            return found[0]
        trained = train()
        if self.put(trained, expected_etag=None):
            return trained
        winner = self.get()
        if winner is None:  # written and deleted in between: nobody else can rely on a set yet
            raise ConfigurationError(f"centroid artefact {self.name} vanished while bootstrapping")
        return winner[0]


class CentroidCache:
    """The current centroid set, read from the artefact once and re-checked every ``refresh_s`` (so that a
    container picks up a rebalance), thread-safe. Absent artefacts are re-checked on every call."""

    def __init__(
        self, store: CentroidStore, *, shard_count: int, refresh_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._shard_count = shard_count
        self._refresh_s = refresh_s
        self._clock = clock
        self._current: CentroidSet | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    @property
    def store(self) -> CentroidStore:
        return self._store

    def _accept(self, centroids: CentroidSet) -> CentroidSet:
        if centroids.shard_count != self._shard_count:
            raise ConfigurationError(
                f"the centroid artefact {self._store.name} has {centroids.shard_count} centroids for "
                f"{self._shard_count} shards: run `shardrag rebalance` after changing store.shard_count"
            )
        self._current, self._loaded_at = centroids, self._clock()
        return centroids

    def get(self) -> CentroidSet | None:
        with self._lock:
            if self._current is not None and self._clock() - self._loaded_at < self._refresh_s:
                return self._current
            found = self._store.get()
            if found is None:
                return self._current
            return self._accept(found[0])

    def invalidate(self) -> None:
        """Re-read the artefact on the next call (a rebalance in this process just swapped it)."""
        with self._lock:
            self._loaded_at = float("-inf")

    def get_or_train(self, train: Callable[[], CentroidSet]) -> CentroidSet:
        """:meth:`get`, bootstrapping the artefact from ``train()`` if it does not exist yet."""
        current = self.get()
        if current is not None:
            return current
        with self._lock:
            return self._accept(self._store.bootstrap(train))


class Placement(Protocol):
    """Which shards store each chunk of one batch."""

    def place(self, doc_ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> list[list[int]]:
        """Per chunk (``doc_ids[i]`` owns row ``i``): the shards that store it, primary first."""
        ...

    def sweep(self, doc_id: str) -> list[int]:
        """Shards that may hold chunks of ``doc_id`` when nothing else is known about where it was placed."""
        ...


class HashPlacement:
    """Every chunk of a document on ``shard_for(doc_id)``."""

    def __init__(self, shard_count: int) -> None:
        self._shard_count = shard_count

    def place(self, doc_ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> list[list[int]]:
        del vectors  # hash placement ignores the content
        return [[shard_for(doc_id, self._shard_count)] for doc_id in doc_ids]

    def sweep(self, doc_id: str) -> list[int]:
        return [shard_for(doc_id, self._shard_count)]


class CentroidPlacement:
    """Each chunk on its nearest centroid's shard and the shards within ``replicate_margin`` of it."""

    def __init__(self, cache: CentroidCache, settings: CentroidSettings, shard_count: int) -> None:
        self._cache = cache
        self._settings = settings
        self._shard_count = shard_count

    def centroids(self, sample: npt.NDArray[np.float32]) -> CentroidSet:
        """The set to place by (bootstrapped from ``sample`` on an empty index)."""
        return self._cache.get_or_train(lambda: train_for_shards(sample, self._shard_count, self._settings))

    def place(self, doc_ids: Sequence[str], vectors: npt.NDArray[np.float32]) -> list[list[int]]:
        if len(doc_ids) == 0:
            return []
        return self.centroids(vectors).place(
            vectors, replicate_margin=self._settings.replicate_margin, max_replicas=self._settings.max_replicas
        )

    def sweep(self, doc_id: str) -> list[int]:
        del doc_id  # a document's chunks may be anywhere
        return list(range(self._shard_count))
