"""The Fuse stage: merge shard results into one ranking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shardrag.errors import ShardsUnavailable
from shardrag.records import Hit, Record, ShardResult


class FusedHits(Record):
    hits: list[Hit]
    searched: list[int]
    failed: list[int]
    skipped: list[int]

    @property
    def degraded(self) -> bool:
        return bool(self.failed)


class Fuser(Protocol):
    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits: ...


class ScoreMergeFuser:
    """Merges shards by score. Cosine scores from different shards are directly comparable (same model, same
    metric), so the merged top-k equals the top-k of one index holding all chunks.

    Ties are broken by chunk id so that the ranking does not depend on which shard answered first.
    """

    def run(self, results: Sequence[ShardResult], top_k: int) -> FusedHits:
        searched = sorted(r.shard for r in results if r.status == "ok")
        failed = sorted(r.shard for r in results if r.status == "failed")
        skipped = sorted(r.shard for r in results if r.status == "skipped")
        if not searched:
            detail = f"shards {failed} failed" if failed else "no shard was searched"
            raise ShardsUnavailable(f"no shard answered: {detail}")
        best: dict[str, Hit] = {}
        for result in results:
            for hit in result.hits:
                # A chunk may be reported twice (replicated placement, a retried branch): keep its best score.
                kept = best.get(hit.chunk_id)
                if kept is None or hit.score > kept.score:
                    best[hit.chunk_id] = hit
        ranked = sorted(best.values(), key=lambda h: (-h.score, h.chunk_id))[:top_k]
        return FusedHits(hits=ranked, searched=searched, failed=failed, skipped=skipped)
