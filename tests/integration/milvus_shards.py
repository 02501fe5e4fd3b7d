"""Real Milvus Lite shards behind the BM25 term accounting, as ``services.ShardStores`` builds them, for tests
that drive the workflow and the indexer directly (no moto runtime)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shardrag.artifacts import FileArtifactStore
from shardrag.config import IndexSettings, ShardEndpoint
from shardrag.store.accounting import TermAccountingStore
from shardrag.store.milvus import MilvusVectorStore
from shardrag.term_stats import TermStatsStore, TermStatsTracker, stats_name


@dataclass
class AccountedShards:
    artifacts: FileArtifactStore
    stats: TermStatsStore
    stores: list[TermAccountingStore]

    def close(self) -> None:
        for store in self.stores:
            store.close()


def accounted_milvus_shards(
    root: Path, count: int, *, collection: str = "c", dimension: int = 384, per_tenant: bool = False
) -> AccountedShards:
    artifacts = FileArtifactStore(root / "index")
    stats = TermStatsStore(artifacts, [stats_name(collection, i) for i in range(count)])
    tracker = TermStatsTracker(lambda: stats)
    stores = [
        TermAccountingStore(
            MilvusVectorStore(
                ShardEndpoint(uri=str(root / f"shard-{i}.db"), collection=collection),
                shard=i,
                dimension=dimension,
                index=IndexSettings(),
            ),
            shard=i,
            tracker=tracker,
            per_tenant=per_tenant,
        )
        for i in range(count)
    ]
    return AccountedShards(artifacts, stats, stores)
