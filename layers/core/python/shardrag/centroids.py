"""Centroid (Voronoi) routing: one k-means centroid per shard, chunks stored beside their nearest centroid and
queries sent only to the shards whose centroids are nearest to them.

Hash placement makes every shard hold a little of every topic, so every query must visit every shard. Placing
each chunk on the shard of its nearest centroid groups neighbours together, so a query's nearest chunks sit
mostly on the shards of its nearest centroids and the others can be skipped. The price is recall: a neighbour
just across a Voronoi boundary is missed. Two knobs buy it back: *replication* (a chunk near a boundary is also
stored on the shards whose centroids are almost as near) and *adaptive probing* (a query near a boundary visits
every shard whose centroid is almost as near as the best). ``bench/centroid_study.py`` measures both.

The centroids are an artefact versioned with the index: the chunks were placed by exactly these centroids, so
queries must be routed by them too. :class:`CentroidSet` carries a content hash as its version and serialises
to a small ``.npz`` that is loaded without pickle.

Measured on SciFact (8 shards, 128-token chunks, exact search, five training seeds): no replication reaches at
best 0.957 relative recall@10 at <= 3 probes on average; copies within 0.06 (at most 2 copies, storage x1.32)
with adaptive probing (margin 0.16, at most 4 shards) keeps 0.975 (worst seed 0.973) probing 2.75 shards on
average, i.e. two thirds of the shard calls saved. Those are the recommended defaults.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from shardrag.records import RoutePlan

__all__ = ["CentroidRouter", "CentroidSet", "train_centroids"]

FloatArray = npt.NDArray[np.float32]

#: Bumped when the serialised layout changes; :meth:`CentroidSet.from_bytes` refuses other formats.
FORMAT = "shardrag-centroids/1"


def _unit_rows(vectors: npt.ArrayLike) -> FloatArray:
    """``vectors`` as a 2-D float32 array with unit-length rows (zero rows stay zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    unit: FloatArray = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
    return unit


def _kmeans_plus_plus(data: FloatArray, k: int, rng: np.random.Generator) -> FloatArray:
    """Greedy k-means++ seeding on the sphere: each step draws a few candidates with probability proportional
    to their squared chordal distance (``2 - 2 cos``) to the nearest seed so far and keeps the one that lowers
    the total distance most. Plain k-means++ (one candidate) put two seeds in one of four well-separated
    clusters for 2 seeds in 10; the greedy variant (as in scikit-learn, ``2 + log k`` candidates) does not."""
    n = data.shape[0]
    trials = 2 + int(np.log(k))
    first = int(rng.integers(n))
    chosen = [first]
    nearest = np.maximum(2.0 - 2.0 * (data @ data[first]), 0.0).astype(np.float64)
    for _ in range(1, k):
        total = float(nearest.sum())
        # With fewer distinct rows than k the total reaches 0: any row will do, the empty-cluster repair follows.
        candidates = rng.choice(n, size=trials, p=nearest / total) if total > 0 else rng.integers(n, size=1)
        distances = np.maximum(2.0 - 2.0 * (data[candidates] @ data.T), 0.0)
        updated = np.minimum(nearest[None, :], distances)
        best = int(np.argmin(updated.sum(axis=1)))
        chosen.append(int(candidates[best]))
        nearest = updated[best]
    return data[chosen].copy()


def _assign(similarity: FloatArray, sizes: npt.NDArray[np.int64] | None, balance: float) -> npt.NDArray[np.int64]:
    """Nearest centroid per row; with ``balance > 0`` a centroid's similarity is lowered in proportion to how
    far its previous cluster exceeded ``n / k`` (a soft capacity penalty)."""
    if balance > 0 and sizes is not None:
        n, k = similarity.shape
        excess = sizes.astype(np.float32) / (n / k) - 1.0
        similarity = similarity - np.float32(balance) * excess[None, :]
    labels: npt.NDArray[np.int64] = np.argmax(similarity, axis=1).astype(np.int64)
    return labels


def train_centroids(
    sample: npt.ArrayLike,
    k: int,
    *,
    seed: int,
    iterations: int,
    balance: float = 0.0,
) -> FloatArray:
    """Spherical k-means: ``k`` unit centroids (``k x d`` float32) for cosine similarity.

    k-means++ seeding, then Lloyd iterations (assign each row to its most similar centroid, set each centroid to
    its cluster's normalised mean) until the assignment stops changing or ``iterations`` run out. Deterministic
    for a given ``sample`` and ``seed``. An empty cluster is re-seeded with the row farthest from its centroid.

    ``balance`` (0 = plain k-means) subtracts ``balance x (size / (n / k) - 1)`` from a centroid's similarity
    when assigning (sizes from the previous iteration), so that oversized clusters shed their boundary rows. On
    SciFact (8 shards) plain k-means left the largest shard at 1.36x the mean (1.48x for the worst of five seeds);
    0.05 brought that to 1.19x (1.26x) at no recall cost beyond seed noise. Above ~0.1 the penalty overshoots
    and oscillates (0.2 left one shard almost empty), hence the recommended 0.05.
    """
    data = _unit_rows(sample)
    n = data.shape[0]
    if k < 1:
        raise ValueError("k must be at least 1")
    if n < k:
        raise ValueError(f"need at least k={k} sample rows, got {n}")
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    if balance < 0:
        raise ValueError("balance must be non-negative")
    rng = np.random.default_rng(seed)
    centroids = _kmeans_plus_plus(data, k, rng)
    labels: npt.NDArray[np.int64] | None = None
    sizes: npt.NDArray[np.int64] | None = None
    for _ in range(iterations):
        similarity = data @ centroids.T
        new_labels = _assign(similarity, sizes, balance)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sizes = np.bincount(labels, minlength=k).astype(np.int64)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, data)
        for empty in np.flatnonzero(sizes == 0):
            # The row least well served by its current centroid becomes the empty cluster's seed.
            worst = int(np.argmin(similarity[np.arange(n), labels]))
            sums[empty] = data[worst]
            similarity[worst, :] = 1.0  # not picked twice
        centroids = _unit_rows(sums)
    return centroids


def _content_version(centroids: FloatArray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(centroids.shape).encode())
    digest.update(np.ascontiguousarray(centroids, dtype="<f4").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class CentroidSet:
    """The trained centroids (one unit row per shard) and where they came from.

    ``version`` is a hash of the centroid values, so two sets are interchangeable exactly when their versions
    match; the index records it so that a router never routes by centroids the chunks were not placed by.
    """

    centroids: FloatArray
    version: str
    trained_on: int
    created_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.centroids.ndim != 2 or self.centroids.shape[0] < 1:
            raise ValueError(f"centroids must be a non-empty k x d array, got shape {self.centroids.shape}")
        if not np.allclose(np.linalg.norm(self.centroids, axis=1), 1.0, atol=1e-3):
            raise ValueError("centroid rows must be unit length (cosine similarity is their dot product)")
        if self.version != _content_version(self.centroids):
            raise ValueError("centroid version does not match the centroid values")
        # A private read-only copy: the values the version hashes can then never change under it.
        frozen = np.array(self.centroids, dtype=np.float32, copy=True)
        frozen.setflags(write=False)
        object.__setattr__(self, "centroids", frozen)

    @classmethod
    def from_centroids(
        cls, centroids: npt.ArrayLike, *, trained_on: int, created_at: float | None = None
    ) -> CentroidSet:
        """A set over ``centroids`` (unit rows, stored as float32 as given), its version computed from the values."""
        rows = np.asarray(centroids, dtype=np.float32)
        return cls(
            centroids=rows,
            version=_content_version(rows),
            trained_on=trained_on,
            created_at=time.time() if created_at is None else created_at,
        )

    @classmethod
    def train(cls, sample: npt.ArrayLike, k: int, *, seed: int, iterations: int, balance: float = 0.0) -> CentroidSet:
        """Train on ``sample`` (see :func:`train_centroids`) and wrap the result."""
        rows = np.asarray(sample, dtype=np.float32)
        centroids = train_centroids(rows, k, seed=seed, iterations=iterations, balance=balance)
        return cls.from_centroids(centroids, trained_on=int(rows.shape[0]))

    @property
    def shard_count(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dimension(self) -> int:
        return int(self.centroids.shape[1])

    def similarities(self, vectors: npt.ArrayLike) -> FloatArray:
        """Cosine similarity of each (re-normalised) row of ``vectors`` to each centroid: ``n x k``."""
        rows = _unit_rows(vectors)
        if rows.shape[1] != self.dimension:
            raise ValueError(f"vectors have dimension {rows.shape[1]}, centroids {self.dimension}")
        similarity: FloatArray = rows @ self.centroids.T
        return similarity

    def nearest(self, vectors: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The shard of each row's nearest centroid."""
        shards: npt.NDArray[np.int64] = np.argmax(self.similarities(vectors), axis=1).astype(np.int64)
        return shards

    def place(self, vectors: npt.ArrayLike, *, replicate_margin: float, max_replicas: int) -> list[list[int]]:
        """The shards that store each row: its nearest centroid's shard first, then every other shard whose
        centroid similarity is within ``replicate_margin`` of the nearest, most similar first, at most
        ``max_replicas`` shards in all (1 = no replication)."""
        if replicate_margin < 0:
            raise ValueError("replicate_margin must be non-negative")
        if max_replicas < 1:
            raise ValueError("max_replicas must be at least 1")
        return _within_margin(self.similarities(vectors), replicate_margin, max_replicas)

    def to_bytes(self) -> bytes:
        """A ``.npz`` of the float32 centroids and a JSON header (no pickled objects)."""
        header = {
            "format": FORMAT,
            "version": self.version,
            "trained_on": self.trained_on,
            "created_at": self.created_at,
        }
        buffer = io.BytesIO()
        np.savez(
            buffer,
            centroids=np.ascontiguousarray(self.centroids, dtype="<f4"),
            header=np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CentroidSet:
        """Inverse of :meth:`to_bytes`; the stored version is checked against the values."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                centroids = np.asarray(archive["centroids"], dtype=np.float32)
                header: dict[str, Any] = json.loads(archive["header"].tobytes().decode("utf-8"))
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"not a centroid set: {exc}") from exc
        if header.get("format") != FORMAT:
            raise ValueError(f"unsupported centroid format {header.get('format')!r}, expected {FORMAT!r}")
        return cls(
            centroids=centroids,
            version=str(header["version"]),
            trained_on=int(header["trained_on"]),
            created_at=float(header["created_at"]),
        )

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_bytes` to ``path`` (through a temporary file, so a reader never sees half a file)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(self.to_bytes())
        partial.replace(target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> CentroidSet:
        return cls.from_bytes(Path(path).read_bytes())


def _within_margin(similarity: FloatArray, margin: float, cap: int) -> list[list[int]]:
    """Per row: the most similar column, then every column within ``margin`` of it, best first, at most ``cap``."""
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :cap]
    ranked = np.take_along_axis(similarity, order, axis=1)
    keep = ranked >= ranked[:, :1] - np.float32(margin)
    return [[int(s) for s in row[mask]] for row, mask in zip(order, keep, strict=True)]


class CentroidRouter:
    """Route stage for centroid placement: the shards whose centroids are nearest to the query, best first.

    ``probe`` (per request, else ``default_probe``) visits exactly that many shards. With neither set the
    probe is adaptive: the nearest shard always, then every shard whose centroid similarity is within
    ``probe_margin`` of the best, at most ``max_probe`` in all.

    ``centroids`` may be a loader, called once on first use (or by :meth:`warm_up`), so that a Lambda container
    reads the artefact once and a router can be built before the artefact is reachable.
    """

    def __init__(
        self,
        centroids: CentroidSet | Callable[[], CentroidSet],
        *,
        probe_margin: float,
        max_probe: int,
        default_probe: int | None = None,
    ) -> None:
        if probe_margin < 0:
            raise ValueError("probe_margin must be non-negative")
        if max_probe < 1:
            raise ValueError("max_probe must be at least 1")
        if default_probe is not None and default_probe < 1:
            raise ValueError("default_probe must be at least 1")
        self._probe_margin = probe_margin
        self._max_probe = max_probe
        self._default_probe = default_probe
        self._loader: Callable[[], CentroidSet] | None = None
        self._centroids: CentroidSet | None = None
        if isinstance(centroids, CentroidSet):
            self._centroids = centroids
            self._check(centroids)
        else:
            self._loader = centroids

    def warm_up(self) -> CentroidSet:
        """Load the centroids if not yet loaded (idempotent) and return them."""
        if self._centroids is None:
            assert self._loader is not None
            loaded = self._loader()
            self._check(loaded)
            self._centroids = loaded
        return self._centroids

    def _check(self, centroids: CentroidSet) -> None:
        if self._default_probe is not None and self._default_probe > centroids.shard_count:
            raise ValueError(f"default_probe {self._default_probe} exceeds the {centroids.shard_count} shards")

    @property
    def centroids(self) -> CentroidSet:
        return self.warm_up()

    def run(self, vector: list[float], probe: int | None = None) -> RoutePlan:
        """The shards to search for ``vector``, nearest centroid first."""
        centroids = self.warm_up()
        shard_count = centroids.shard_count
        chosen = probe if probe is not None else self._default_probe
        if chosen is not None and not 1 <= chosen <= shard_count:
            raise ValueError(f"probe must be between 1 and {shard_count}, got {chosen}")
        similarity = centroids.similarities(np.asarray(vector, dtype=np.float32))
        if chosen is not None:
            shards = _within_margin(similarity, float("inf"), chosen)[0]
        else:
            shards = _within_margin(similarity, self._probe_margin, min(self._max_probe, shard_count))[0]
        return RoutePlan(shards=shards, shard_count=shard_count)
