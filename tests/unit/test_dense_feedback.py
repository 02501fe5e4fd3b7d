"""Dense pseudo-relevance feedback: which hits feed back, the expanded vector, and the second pass's results."""

from __future__ import annotations

import math
from typing import cast

import pytest
from shardrag.feedback import DenseFeedback, opening_vectors, with_dense
from shardrag.fusion import ConvexFuser
from shardrag.records import Chunk, EmbeddedChunk, Hit, ShardResult
from shardrag.store.base import VectorStore


def _hit(chunk_id: str, score: float, shard: int = 0) -> Hit:
    return Hit(chunk_id=chunk_id, doc_id=chunk_id.split(":")[0], score=score, shard=shard)


def test_one_hit_per_document_feeds_back_in_fused_order() -> None:
    # GIVEN a fused ranking in which document a holds the first two hits
    fused = [_hit("a:1", 3.0), _hit("a:0", 2.5), _hit("b:0", 2.0), _hit("c:0", 1.0)]
    # WHEN two documents feed back
    chosen = DenseFeedback(documents=2).feedback_hits(fused)
    # THEN each document's best hit does, a's once
    assert [h.chunk_id for h in chosen] == ["a:1", "b:0"]
    assert DenseFeedback(documents=5).feedback_hits(fused[:1]) == fused[:1]


def test_the_query_moves_towards_the_mean_of_the_feedback_and_stays_unit_length() -> None:
    feedback = DenseFeedback(documents=2, weight=1.0)
    moved = feedback.run([1.0, 0.0, 0.0], [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # q + 1.0 * mean = (1, 0.5, 0.5), normalised
    norm = math.sqrt(1.5)
    assert moved == pytest.approx([1 / norm, 0.5 / norm, 0.5 / norm])
    assert sum(v * v for v in moved) == pytest.approx(1.0)


def test_nothing_to_feed_back_keeps_the_query() -> None:
    assert DenseFeedback().run([0.6, 0.8], []) == pytest.approx([0.6, 0.8])
    # Feedback that cancels the query exactly cannot be normalised: the query is kept.
    assert DenseFeedback(weight=1.0).run([1.0, 0.0], [[-1.0, 0.0]]) == pytest.approx([1.0, 0.0])


def test_feedback_of_another_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="dimension 3"):
        DenseFeedback().run([1.0, 0.0, 0.0], [[1.0, 0.0]])


@pytest.mark.parametrize(("documents", "weight"), [(0, 1.0), (2, 0.0), (2, -1.0), (2, 11.0)])
def test_arguments_are_validated(documents: int, weight: float) -> None:
    with pytest.raises(ValueError):
        DenseFeedback(documents=documents, weight=weight)


class _OpeningsStore:
    """A fake shard that holds some documents' opening chunks (and nothing else)."""

    def __init__(self, openings: dict[str, list[float]]) -> None:
        self.openings = openings
        self.asked: list[tuple[str, tuple[int, int] | None]] = []

    def stored_chunks(
        self, doc_id: str, *, positions: tuple[int, int] | None = None, vectors: bool = True
    ) -> list[EmbeddedChunk]:
        self.asked.append((doc_id, positions))
        if doc_id not in self.openings:
            return []
        chunk = Chunk(chunk_id=f"{doc_id}::v0::00000", doc_id=doc_id, text="t", position=0)
        return [EmbeddedChunk(chunk=chunk, vector=self.openings[doc_id] if vectors else [])]


def test_each_document_feeds_back_its_opening_chunk_from_its_shard() -> None:
    # GIVEN two shards, and fused hits that are later chunks of their documents
    shards = {0: _OpeningsStore({"a": [1.0, 0.0]}), 1: _OpeningsStore({"b": [0.0, 1.0]})}
    hits = [_hit("a:3", 2.0, 0), _hit("b:1", 1.0, 1), _hit("gone:0", 0.5, 0)]
    # WHEN their vectors are read
    vectors = opening_vectors(hits, lambda shard: cast(VectorStore, shards[shard]))
    # THEN each document's position-0 chunk is asked of the hit's shard; a document not found feeds nothing
    assert vectors == [[1.0, 0.0], [0.0, 1.0]]
    assert shards[0].asked == [("a", (0, 0)), ("gone", (0, 0))]
    assert shards[1].asked == [("b", (0, 0))]


def _result(shard: int, dense: list[Hit], lexical: list[Hit], status: str = "ok") -> ShardResult:
    return ShardResult(shard=shard, status=status, hits=dense, lexical=lexical)  # type: ignore[arg-type]


def test_the_second_pass_replaces_dense_hits_and_keeps_bm25() -> None:
    # GIVEN a first pass on two shards and a second dense pass on both
    first = [
        _result(0, [_hit("a:0", 0.9)], [_hit("b:0", 7.0)]),
        _result(1, [_hit("c:0", 0.8, 1)], [_hit("d:0", 5.0, 1)]),
    ]
    second = [_result(0, [_hit("e:0", 0.95)], []), _result(1, [_hit("f:0", 0.7, 1)], [])]
    # WHEN they are combined
    combined = with_dense(first, second)
    # THEN dense hits come from the second pass, BM25 from the first, and fusion reads them as usual
    assert [[h.chunk_id for h in r.hits] for r in combined] == [["e:0"], ["f:0"]]
    assert [[h.chunk_id for h in r.lexical] for r in combined] == [["b:0"], ["d:0"]]
    fused = ConvexFuser().run(combined, 4).hits
    assert {h.doc_id for h in fused} == {"e", "f", "b", "d"}


def test_a_shard_missing_from_the_second_pass_keeps_the_first_pass_whole() -> None:
    first = [_result(0, [_hit("a:0", 0.9)], []), _result(1, [_hit("c:0", 0.8, 1)], [])]
    second = [_result(0, [_hit("e:0", 0.95)], []), _result(1, [], [], status="failed")]
    assert with_dense(first, second) == first


def test_a_shard_that_failed_the_first_pass_stays_failed() -> None:
    first = [_result(0, [_hit("a:0", 0.9)], []), _result(1, [], [], status="failed")]
    second = [_result(0, [_hit("e:0", 0.95)], [])]
    combined = with_dense(first, second)
    assert [r.status for r in combined] == ["ok", "failed"]
    assert [h.chunk_id for h in combined[0].hits] == ["e:0"]
