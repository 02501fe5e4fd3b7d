"""The write path's core: chunk, embed (dense and BM25) in batches, place each chunk (hash: the document's shard;
centroid: the nearest centroids' shards), upsert, drop stale chunks. A chunk whose embedded text an earlier version
already had takes that vector instead of running the model (``shardrag.embedding.reuse``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from shardrag.bm25 import Bm25Encoder, CorpusStats
from shardrag.chunking import Chunker, Document
from shardrag.embedding.base import Embedder
from shardrag.embedding.reuse import VectorPool, embed_reusing
from shardrag.lexical_units import lexical_digest, lexical_units
from shardrag.placement import HashPlacement, Placement
from shardrag.records import Chunk, EmbeddedChunk, Record, SparseVector
from shardrag.store.base import VectorStore


class IndexResult(Record):
    doc_id: str
    #: The primary shard (hash: the only one).
    shard: int
    chunks: int
    removed: int
    #: Every shard that now holds a chunk of the document (centroid placement spreads and replicates them).
    shards: list[int] = []
    #: Chunks the model embedded, and chunks whose vector was taken from the document's earlier chunks.
    embedded: int = 0
    reused: int = 0


class Reusable(Record):
    """A document's earlier chunks whose vectors may be reused: the shards that hold them and the versions that
    the indexer's model embedded (the registry knows both)."""

    shards: list[int]
    versions: list[str]


#: Earlier chunks read for reuse lie within this many positions of the new chunks' range (an edit that adds or
#: removes paragraphs moves the chunks after it by about as many positions; a larger move only costs embeddings).
REUSE_POSITION_MARGIN = 256


class DocumentIndexer:
    """Writes documents so that answers never lose them mid-update: the new version's chunks are upserted
    before the previous version's are deleted."""

    def __init__(
        self,
        *,
        chunker: Chunker,
        embedder: Embedder,
        store_for: Callable[[int], VectorStore],
        shard_count: int,
        bm25: Bm25Encoder | None = None,
        placement: Placement | None = None,
        corpus_stats: Callable[[str], CorpusStats] | None = None,
        model_id: str = "",
    ) -> None:
        """``corpus_stats``: a tenant's current BM25 statistics (the table its chunks are counted in), read once
        per batch for the measured mean unit length; None weighs each batch as if it were the whole corpus.
        ``model_id``: what identifies ``embedder``'s vectors (weights, tokenizer, truncation); empty turns
        embedding reuse off."""
        self._chunker = chunker
        self._corpus_stats = corpus_stats
        self.model_id = model_id
        self._placement: Placement = placement or HashPlacement(shard_count)
        self._bm25 = bm25 or Bm25Encoder()
        self._embedder = embedder
        self._store_for = store_for
        self._shard_count = shard_count

    def may_hold(self, doc_id: str) -> list[int]:
        """Shards that may receive chunks of ``doc_id`` before it is embedded (hash: one; centroid: any)."""
        return self._placement.sweep(doc_id)

    def run(
        self,
        documents: Sequence[Document],
        *,
        flush: bool = True,
        previous: Mapping[str, Sequence[int]] | None = None,
        sweep: bool = True,
        reuse: Mapping[str, Reusable] | None = None,
    ) -> list[IndexResult]:
        """Index ``documents``; ``previous``: the shards the registry recorded for a document's earlier version,
        swept for its stale chunks together with the new ones (a document missing from it is swept wherever the
        placement rule says it may be: its hash shard, or under centroid placement every shard). ``sweep``
        False: upsert only (a large object written in parts is swept once, after its last part). ``reuse``:
        per document, earlier chunks whose vectors are taken for new chunks with the same embedded text."""
        planned = [(doc, self._chunker.run(doc)) for doc in documents]
        texts = [self._chunker.embedding_text(chunk) for _, chunks in planned for chunk in chunks]
        # One embedding call for the whole batch: the embedder batches by length, which pads far less than
        # embedding document by document.
        pools = [self._pool(planned, reuse)] if reuse and self.model_id else []
        embedding = embed_reusing(self._embedder, texts, pools)
        vectors = embedding.vectors
        owners = [doc.doc_id for doc, chunks in planned for _ in chunks]
        placed = self._placement.place(owners, np.asarray(vectors, dtype=np.float32))
        # BM25 indexes what the model embeds (title prefixed): 0.685 vs 0.650 nDCG@10 (bench/hybrid_study.py).
        planned, sparse = self._sparse(planned)
        by_shard: dict[int, list[EmbeddedChunk]] = {}
        held: list[list[int]] = []
        embedded: list[int] = []
        offset = 0
        for _, chunks in planned:
            holders: dict[int, None] = {}
            embedded.append(sum(embedding.computed[offset : offset + len(chunks)]))
            for chunk in chunks:
                vector = [float(x) for x in vectors[offset]]
                item = EmbeddedChunk(chunk=chunk, vector=vector, sparse=sparse[offset])
                for shard in placed[offset]:
                    by_shard.setdefault(shard, []).append(item)
                    holders[shard] = None
                offset += 1
            held.append(list(holders))
        for shard, items in by_shard.items():
            self._store_for(shard).upsert(items)
        results = []
        touched: set[int] = set(by_shard)
        for (document, chunks), shards, computed in zip(planned, held, embedded, strict=True):
            counts = {"embedded": computed, "reused": len(chunks) - computed}
            home = self._placement.sweep(document.doc_id)
            if not sweep:
                primary = shards[0] if shards else home[0]
                results.append(
                    IndexResult(
                        doc_id=document.doc_id,
                        shard=primary,
                        chunks=len(chunks),
                        removed=0,
                        shards=shards,
                        **counts,
                    )
                )
                continue
            before = previous.get(document.doc_id, home) if previous is not None else home
            # New chunks first (above), then the stale ones wherever the old or the new version may have put them.
            swept = list(dict.fromkeys([*shards, *before])) or home[:1]
            removed = sum(
                self._store_for(shard).delete_document(document.doc_id, keep_version=document.version)
                for shard in swept
            )
            touched.update(swept)
            primary = shards[0] if shards else home[0]
            results.append(
                IndexResult(
                    doc_id=document.doc_id,
                    shard=primary,
                    chunks=len(chunks),
                    removed=removed,
                    shards=shards,
                    **counts,
                )
            )
        if flush:
            # Milvus Lite searches unflushed (growing) data ~20x slower; seal after each batch.
            for shard in sorted(touched):
                self._store_for(shard).flush()
        return results

    def _sparse(
        self, planned: Sequence[tuple[Document, list[Chunk]]]
    ) -> tuple[list[tuple[Document, list[Chunk]]], list[SparseVector]]:
        """The BM25 side of every chunk (in ``planned`` order), computed over the chunk's lexical unit
        (:mod:`shardrag.lexical_units`), each tenant's units weighted by the mean unit length of that tenant's
        table; and ``planned`` with each chunk's ``lexical_digest`` set (what its vector depends on)."""
        units = [
            lexical_units(
                document,
                chunks,
                window=self._bm25.window,
                tokenizer=self._bm25.tokenizer,
                embedding_text=self._chunker.embedding_text,
            )
            for document, chunks in planned
        ]
        vectors: dict[int, list[SparseVector]] = {}
        for tenant in dict.fromkeys(document.tenant for document, _ in planned):
            owned = [n for n, (document, _) in enumerate(planned) if document.tenant == tenant]
            measured = self._corpus_stats is not None and self._bm25.avgdl is None
            corpus = self._corpus_stats(tenant) if measured and self._corpus_stats is not None else None
            encoded = iter(
                self._bm25.units(
                    [unit.text for n in owned for unit in units[n]],
                    [len(unit.chunks) for n in owned for unit in units[n]],
                    corpus,
                )
            )
            # Units cover their document's chunks in order, so the encoded rows follow the chunks.
            for n in owned:
                vectors[n] = [next(encoded) for _ in planned[n][1]]
        marked = [
            (
                document,
                [
                    chunks[i].model_copy(update={"lexical_digest": lexical_digest(unit.text, counted=j == 0)})
                    for unit in doc_units
                    for j, i in enumerate(unit.chunks)
                ],
            )
            for (document, chunks), doc_units in zip(planned, units, strict=True)
        ]
        return marked, [vector for n in range(len(planned)) for vector in vectors[n]]

    def _pool(self, planned: Sequence[tuple[Document, list[Chunk]]], reuse: Mapping[str, Reusable]) -> VectorPool:
        """The earlier vectors of the documents in ``reuse``, read from the store around the new chunks'
        positions (bounded: a part of a large object reads its own range and a margin, never the whole document)."""
        pool = VectorPool(self.model_id, self._embedder.dimension)
        for document, chunks in planned:
            source = reuse.get(document.doc_id)
            if source is None or not chunks:
                continue
            margin = REUSE_POSITION_MARGIN
            window = (max(0, chunks[0].position - margin), chunks[-1].position + margin)
            versions = set(source.versions)
            for shard in source.shards:
                for stored in self._store_for(shard).stored_chunks(document.doc_id, positions=window):
                    if stored.chunk.version in versions:
                        pool.add(self._chunker.embedding_text(stored.chunk), stored.vector)
        return pool
