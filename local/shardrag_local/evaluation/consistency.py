"""Is the hash-sharded ranking the ranking one index over the same data would give?

Rather than ingesting everything a second time into a one-shard runtime, every stored chunk is read back from
the shards (ids and vectors) and each query is answered by brute force over all of them: that is exactly what a
single exact index holding the same data returns, so comparing the API's top-10 against it checks routing,
per-shard search and the cross-shard merge at once, for a fraction of the cost.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from shardrag.config import ShardEndpoint

#: Two scores closer than this are a tie: Milvus and numpy compute cosine in float32 in different orders.
SCORE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ChunkMatrix:
    chunk_ids: list[str]
    vectors: np.ndarray[Any, np.dtype[np.float32]]


def read_back_chunks(endpoints: Sequence[ShardEndpoint], *, batch_size: int = 1000) -> ChunkMatrix:
    """Every chunk id and vector stored in the given shards (read with a query iterator, not a search)."""
    from pymilvus import MilvusClient

    # The iterator warns on every open that Milvus Lite gives no MVCC timestamp; client time is right here.
    logging.getLogger("pymilvus").setLevel(logging.ERROR)
    ids: list[str] = []
    vectors: list[list[float]] = []
    for endpoint in endpoints:
        client = MilvusClient(uri=endpoint.uri)
        iterator = client.query_iterator(
            endpoint.collection, batch_size=batch_size, filter="", output_fields=["chunk_id", "dense"]
        )
        while rows := iterator.next():
            for row in rows:
                ids.append(str(row["chunk_id"]))
                vectors.append(list(row["dense"]))
        iterator.close()
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    # The dense index scores by inner product of unit vectors; normalise anyway so that a stray non-unit vector
    # cannot make the exact reference disagree with the cosine it stands for.
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return ChunkMatrix(ids, (matrix / np.where(norms == 0, 1, norms)).astype(np.float32))


@dataclass(frozen=True)
class ShardingCheck:
    queries: int
    k: int
    chunks: int
    mean_overlap: float
    min_overlap: float
    identical_order: int
    #: Queries whose top-k differ only among chunks whose scores tie within :data:`SCORE_TOLERANCE`.
    differ_only_by_ties: int
    #: Queries with a real difference (neither identical nor explained by ties): the check fails if any.
    mismatches: list[str]

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "API top-k vs brute-force cosine over every chunk read back from the shards",
            "queries": self.queries,
            "k": self.k,
            "chunks": self.chunks,
            "mean_overlap": round(self.mean_overlap, 4),
            "min_overlap": round(self.min_overlap, 4),
            "identical_order": self.identical_order,
            "differ_only_by_ties": self.differ_only_by_ties,
            "mismatches": self.mismatches[:20],
            "passed": self.passed,
        }


def compare_with_brute_force(
    api_rankings: dict[str, list[str]],
    query_vectors: dict[str, np.ndarray[Any, np.dtype[np.float32]]],
    chunks: ChunkMatrix,
    *,
    k: int = 10,
) -> ShardingCheck:
    """Top-k chunk overlap between the API and brute force, query by query."""
    position = {chunk_id: i for i, chunk_id in enumerate(chunks.chunk_ids)}
    overlaps: list[float] = []
    identical = ties = 0
    mismatches: list[str] = []
    for query_id, api_top in api_rankings.items():
        scores = chunks.vectors @ query_vectors[query_id]
        # The fuser's order: score descending, then chunk id ascending.
        order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), chunks.chunk_ids[i]))
        expected = [chunks.chunk_ids[i] for i in order[:k]]
        got = api_top[:k]
        depth = min(k, len(expected))
        overlaps.append(len(set(got) & set(expected)) / depth if depth else 1.0)
        if got == expected:
            identical += 1
            continue
        # Differences are acceptable only where the brute-force scores tie with the k-th score.
        edge = float(scores[order[depth - 1]])
        disputed = (set(got) ^ set(expected)) | {a for a, b in zip(got, expected, strict=False) if a != b}
        if all(c in position and abs(float(scores[position[c]]) - edge) <= SCORE_TOLERANCE for c in disputed) or (
            set(got) == set(expected) and _same_up_to_ties(got, scores, position)
        ):
            ties += 1
        else:
            mismatches.append(query_id)
    return ShardingCheck(
        queries=len(overlaps),
        k=k,
        chunks=len(chunks.chunk_ids),
        mean_overlap=sum(overlaps) / len(overlaps) if overlaps else 0.0,
        min_overlap=min(overlaps, default=0.0),
        identical_order=identical,
        differ_only_by_ties=ties,
        mismatches=mismatches,
    )


def _same_up_to_ties(got: list[str], scores: np.ndarray[Any, Any], position: dict[str, int]) -> bool:
    """Same set, and the API's order is non-increasing in brute-force score up to the tolerance."""
    values = [float(scores[position[c]]) for c in got]
    return all(a + SCORE_TOLERANCE >= b for a, b in itertools.pairwise(values))
