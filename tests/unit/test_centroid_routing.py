from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shardrag.centroids import CentroidRouter, CentroidSet, train_centroids
from shardrag.routing import Router


def _clustered(seed: int = 7, k: int = 4, per_cluster: int = 60, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Rows scattered tightly around ``k`` random unit directions, and each row's true cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), per_cluster)
    rows = centres[labels] + 0.05 * rng.normal(size=(k * per_cluster, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    order = rng.permutation(len(rows))
    return rows[order].astype(np.float32), labels[order]


def _axes() -> CentroidSet:
    """Three centroids on the coordinate axes of a 3-D space."""
    return CentroidSet.from_centroids(np.eye(3, dtype=np.float32), trained_on=3, created_at=0.0)


def _unit(*values: float) -> list[float]:
    vector = np.asarray(values, dtype=np.float64)
    return [float(x) for x in vector / np.linalg.norm(vector)]


def test_training_recovers_clusters_and_is_deterministic() -> None:
    # GIVEN four well-separated clusters
    rows, labels = _clustered()
    # WHEN centroids are trained twice with the same seed
    first = train_centroids(rows, 4, seed=3, iterations=20)
    second = train_centroids(rows, 4, seed=3, iterations=20)
    # THEN the runs agree bit for bit, rows are unit length, and each cluster maps onto exactly one centroid
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assigned = np.argmax(rows @ first.T, axis=1)
    mapping = {int(t): {int(a) for a in assigned[labels == t]} for t in range(4)}
    assert all(len(found) == 1 for found in mapping.values())
    assert len({next(iter(found)) for found in mapping.values()}) == 4


def test_balanced_training_still_recovers_equal_clusters() -> None:
    rows, labels = _clustered(seed=11)
    centroids = train_centroids(rows, 4, seed=0, iterations=30, balance=0.1)
    assigned = np.argmax(rows @ centroids.T, axis=1)
    assert sorted(np.bincount(assigned, minlength=4)) == [60, 60, 60, 60]
    assert all(len(set(assigned[labels == t])) == 1 for t in range(4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 500}, "at least k=500"),
        ({"k": 2, "iterations": 0}, "iterations"),
        ({"k": 2, "balance": -1.0}, "balance"),
    ],
)
def test_training_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    rows, _ = _clustered()
    arguments = {"seed": 0, "iterations": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        train_centroids(rows, **arguments)  # type: ignore[arg-type]


def test_save_and_load_round_trip_keeps_values_and_version(tmp_path: Path) -> None:
    # GIVEN a trained set
    rows, _ = _clustered()
    trained = CentroidSet.train(rows, 4, seed=1, iterations=10)
    # WHEN it is saved and loaded, and rebuilt from the same values
    loaded = CentroidSet.load(trained.save(tmp_path / "index" / "centroids.npz"))
    rebuilt = CentroidSet.from_centroids(trained.centroids, trained_on=1)
    # THEN values, metadata and version survive, and the version depends on the values only
    np.testing.assert_array_equal(loaded.centroids, trained.centroids)
    assert (loaded.version, loaded.trained_on, loaded.created_at) == (
        trained.version,
        trained.trained_on,
        trained.created_at,
    )
    assert trained.trained_on == len(rows)
    assert rebuilt.version == trained.version
    assert CentroidSet.from_bytes(trained.to_bytes()).version == trained.version
    assert not (tmp_path / "index" / "centroids.npz.partial").exists()


def test_version_changes_with_values_and_is_checked() -> None:
    base = _axes()
    moved = CentroidSet.from_centroids(np.array([[1, 0, 0], [0, 1, 0], [0, 0.6, 0.8]]), trained_on=3)
    assert moved.version != base.version
    with pytest.raises(ValueError, match="version"):
        CentroidSet(centroids=moved.centroids, version=base.version, trained_on=3)
    with pytest.raises(ValueError):
        base.centroids[0, 0] = 2.0  # read-only: the version would silently go stale
    with pytest.raises(ValueError, match="unit length"):
        CentroidSet.from_centroids(np.array([[2.0, 0.0], [0.0, 1.0]]), trained_on=2)


def test_from_bytes_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a centroid set"):
        CentroidSet.from_bytes(b"definitely not an npz")


def test_place_puts_nearest_first_and_adds_shards_within_margin() -> None:
    centroids = _axes()
    # Similarities: row 0 -> (0.8, 0.6, 0); row 1 -> (0.6, 0.57, 0.57); row 2 -> all 1/sqrt(3).
    vectors = [[0.8, 0.6, 0.0], [0.6, 0.565, 0.565], [1.0, 1.0, 1.0]]
    assert centroids.place(vectors, replicate_margin=0.0, max_replicas=3) == [[0], [0], [0, 1, 2]]
    assert centroids.place(vectors, replicate_margin=0.1, max_replicas=3) == [[0], [0, 1, 2], [0, 1, 2]]
    assert centroids.place(vectors, replicate_margin=0.3, max_replicas=3) == [[0, 1], [0, 1, 2], [0, 1, 2]]
    # The cap counts every copy, the nearest included.
    assert centroids.place(vectors, replicate_margin=0.3, max_replicas=2) == [[0, 1], [0, 1], [0, 1]]
    assert centroids.place(vectors, replicate_margin=1.0, max_replicas=1) == [[0], [0], [0]]


def test_place_validates_arguments() -> None:
    centroids = _axes()
    with pytest.raises(ValueError, match="max_replicas"):
        centroids.place([[1.0, 0.0, 0.0]], replicate_margin=0.1, max_replicas=0)
    with pytest.raises(ValueError, match="replicate_margin"):
        centroids.place([[1.0, 0.0, 0.0]], replicate_margin=-0.1, max_replicas=2)
    with pytest.raises(ValueError, match="dimension"):
        centroids.place([[1.0, 0.0]], replicate_margin=0.1, max_replicas=2)


def test_router_fixed_probe_returns_nearest_shards_best_first() -> None:
    router = CentroidRouter(_axes(), probe_margin=0.0, max_probe=3)
    vector = _unit(0.2, 0.9, 0.5)
    assert router.run(vector, probe=1).shards == [1]
    assert router.run(vector, probe=2).shards == [1, 2]
    assert router.run(vector, probe=3).shards == [1, 2, 0]


def test_router_default_probe_comes_from_configuration() -> None:
    router = CentroidRouter(_axes(), probe_margin=0.5, max_probe=3, default_probe=2)
    assert router.run(_unit(0.2, 0.9, 0.5)).shards == [1, 2]
    assert router.run(_unit(0.2, 0.9, 0.5), probe=1).shards == [1]


def test_router_adaptive_probes_within_margin_up_to_cap() -> None:
    vector = _unit(0.1, 1.0, 0.9)  # similarities ~ (0.07, 0.74, 0.67)
    assert CentroidRouter(_axes(), probe_margin=0.0, max_probe=3).run(vector).shards == [1]
    assert CentroidRouter(_axes(), probe_margin=0.1, max_probe=3).run(vector).shards == [1, 2]
    assert CentroidRouter(_axes(), probe_margin=1.0, max_probe=3).run(vector).shards == [1, 2, 0]
    assert CentroidRouter(_axes(), probe_margin=1.0, max_probe=2).run(vector).shards == [1, 2]
    # A cap above the shard count is harmless.
    assert CentroidRouter(_axes(), probe_margin=1.0, max_probe=64).run(vector).shards == [1, 2, 0]


@pytest.mark.parametrize("probe", [0, -1, 4])
def test_router_rejects_probe_out_of_range(probe: int) -> None:
    router = CentroidRouter(_axes(), probe_margin=0.1, max_probe=3)
    with pytest.raises(ValueError, match="probe must be between 1 and 3"):
        router.run(_unit(1, 0, 0), probe=probe)


def test_router_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="probe_margin"):
        CentroidRouter(_axes(), probe_margin=-0.1, max_probe=2)
    with pytest.raises(ValueError, match="max_probe"):
        CentroidRouter(_axes(), probe_margin=0.1, max_probe=0)
    with pytest.raises(ValueError, match="default_probe"):
        CentroidRouter(_axes(), probe_margin=0.1, max_probe=2, default_probe=4).warm_up()


def test_router_loads_centroids_once_on_first_use() -> None:
    calls: list[int] = []

    def loader() -> CentroidSet:
        calls.append(1)
        return _axes()

    router = CentroidRouter(loader, probe_margin=0.0, max_probe=2)
    assert calls == []
    router.run(_unit(1, 0, 0))
    router.run(_unit(0, 1, 0))
    assert calls == [1]
    assert router.centroids.version == _axes().version


def test_route_plan_marks_only_probed_shards() -> None:
    router: Router = CentroidRouter(_axes(), probe_margin=0.1, max_probe=3)
    plan = router.run(_unit(0.1, 1.0, 0.9))
    assert plan.shard_count == 3
    assert plan.selected_map() == {"shard_0": False, "shard_1": True, "shard_2": True}
