"""Typed records passed between stages and across the Step Functions payload.

Every record crossing a state boundary is a Pydantic model so that each handler validates what it receives
(a malformed payload is a clear error, not a ``KeyError`` deep in a stage) and serialises what it returns.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

#: Bound on the text each hit carries through the state machine: N shards x top_k hits must stay far below
#: the 256 KiB Step Functions payload limit (50 hits x 8 shards x 2 KiB = 800 KiB would not; see fusion).
MAX_HIT_TEXT_CHARS = 2000
#: Between a chunk id's document id and the rest (``shardrag.row_identity``).
CHUNK_ID_SEPARATOR = "::"


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SparseVector(Record):
    """A sparse vector as parallel lists (JSON-able through the state machine; Milvus takes ``as_dict()``)."""

    indices: list[int] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)

    @property
    def is_empty_marker(self) -> bool:
        return self.indices == [0]

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.indices, self.values, strict=True))

    @classmethod
    def from_dict(cls, weights: dict[int, float]) -> SparseVector:
        ids = sorted(weights)
        return cls(indices=ids, values=[float(weights[i]) for i in ids])


class Chunk(Record):
    """One retrievable unit as stored in a shard."""

    chunk_id: str
    #: Internal document id (``shardrag.identity``): unique across objects, bulk lines and tenants.
    doc_id: str
    text: str
    source: str = ""
    title: str = ""
    position: int = 0
    version: str = ""
    tenant: str = "default"
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: The id users know the document by: the object key, or a bulk line's own ``_id`` (empty: ``doc_id``).
    external_id: str = ""
    #: The epoch that wrote the row and the one that retired it (0: live); what a query sees (``Snapshot``).
    epoch_from: int = 0
    epoch_to: int = 0


class Snapshot(Record):
    """What one query sees (``shardrag.visibility``): every epoch up to ``upto`` except those in ``open`` (begun,
    not committed)."""

    upto: int = 0
    open: list[int] = Field(default_factory=list)
    #: When the query read it (seconds since the epoch; 0: not stamped): rows it sees are kept for
    #: ``ingestion.retire_grace_s`` after the commit that retired them, so a query refuses an older snapshot.
    taken_at: float = 0.0

    def committed(self, epoch: int) -> bool:
        return epoch <= self.upto and epoch not in self.open

    def sees(self, epoch_from: int, epoch_to: int) -> bool:
        """Whether a row written at ``epoch_from`` and retired at ``epoch_to`` (0: live) is visible."""
        return self.committed(epoch_from) and not (epoch_to and self.committed(epoch_to))

    def expr(self) -> str:
        """The same rule as a Milvus boolean expression over the rows' ``epoch_from`` and ``epoch_to``."""
        pending = ", ".join(str(int(e)) for e in sorted(self.open))
        written = f"epoch_from <= {int(self.upto)}" + (f" and epoch_from not in [{pending}]" if pending else "")
        unretired = f"epoch_to == 0 or epoch_to > {int(self.upto)}" + (
            f" or epoch_to in [{pending}]" if pending else ""
        )
        return f"({written} and ({unretired}))"


class StoredTerms(NamedTuple):
    """A stored chunk's BM25 side and its tenant (term statistics are kept per tenant in multi-tenant mode)."""

    tenant: str
    sparse: SparseVector


class EmbeddedChunk(Record):
    chunk: Chunk
    vector: list[float]
    #: The chunk's BM25 document side (``shardrag.bm25``); ``None`` only where no lexical index is kept.
    sparse: SparseVector | None = None


class Hit(Record):
    """A ranked chunk returned by a shard search (score: cosine similarity, higher is better)."""

    chunk_id: str
    doc_id: str
    score: float
    #: Empty in ids-only results (evaluation, and the tail of deep fusion candidates).
    text: str = ""
    source: str = ""
    title: str = ""
    position: int = 0
    shard: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: The document's external id (the object key or a bulk line's ``_id``); the API reports it as ``doc_id``.
    external_id: str = ""

    @property
    def display_id(self) -> str:
        return self.external_id or self.doc_id

    def compact(self) -> dict[str, Any]:
        """The hit as it crosses the state machine: empty and zero fields left out (the defaults restore them)
        and the chunk id without its leading document id, which keeps an ids-only hit near 100 bytes
        (:func:`whole_chunk_ids` puts it back)."""
        out = self.model_dump(exclude_defaults=True)
        prefix = f"{self.doc_id}{CHUNK_ID_SEPARATOR}"
        if self.chunk_id.startswith(prefix):
            out["chunk_id"] = self.chunk_id[len(self.doc_id) :]
        return out


def whole_chunk_ids(shards: Any) -> Any:
    """Shard results as they crossed the state machine (:meth:`Hit.compact`), with every chunk id whole again.
    One pass over the raw payload: a validator on each hit cost ~15 us more per hit (``timeit`` of
    ``Hit.model_validate``), and a hybrid query parses a few hundred hits."""
    if isinstance(shards, list):
        for result in shards:
            if not isinstance(result, dict):
                continue
            for hits in (result.get("hits"), result.get("lexical")):
                for hit in hits if isinstance(hits, list) else ():
                    if isinstance(hit, dict) and str(hit.get("chunk_id", "")).startswith(CHUNK_ID_SEPARATOR):
                        hit["chunk_id"] = f"{hit.get('doc_id', '')}{hit['chunk_id']}"
    return shards


class SearchRequest(Record):
    """What one shard is asked: the query vectors, how many hits, and an optional compiled filter."""

    vector: list[float]
    top_k: int
    filter_expr: str = ""
    #: BM25 query side (term id -> IDF); ``None`` when the query does not search lexically.
    sparse: SparseVector | None = None
    #: Client-side deadline of one store call in seconds (``None``: none). A store that misses it is busy.
    timeout_s: float | None = None
    #: The query's snapshot: only the rows it sees are searched (``None``: every row).
    snapshot: Snapshot | None = None


class ShardResult(Record):
    """Outcome of one Parallel branch. ``status`` is set by the state machine, not by the handler."""

    shard: int
    status: Literal["ok", "failed", "skipped"]
    #: Dense (cosine) hits, best first.
    hits: list[Hit] = Field(default_factory=list)
    #: BM25 hits, best first (modes ``bm25`` and ``hybrid``).
    lexical: list[Hit] = Field(default_factory=list)
    took_ms: float = 0.0
    error: str | None = None


class RoutePlan(Record):
    """Which shards a query visits."""

    shards: list[int]
    shard_count: int

    def selected_map(self) -> dict[str, bool]:
        """The form the state machine's per-branch Choice reads (``$.route.shard_<i>``)."""
        chosen = set(self.shards)
        return {f"shard_{i}": i in chosen for i in range(self.shard_count)}


class Citation(Record):
    ref: int = Field(description="Number used in the answer text, e.g. [1]")
    doc_id: str
    chunk_id: str
    source: str
    title: str = ""
    score: float
    text: str


class Answer(Record):
    text: str
    citations: list[Citation]
    model: str
