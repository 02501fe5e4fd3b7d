"""The write path's core: chunk, embed (dense and BM25) in batches, place each chunk (hash: the document's shard;
centroid: the nearest centroids' shards), upsert, drop stale chunks. A chunk whose embedded text an earlier version
already had takes that vector instead of running the model (``shardrag.embedding.reuse``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from shardrag.bm25 import Bm25Encoder, CorpusStats, grid_mean, measured_avgdl
from shardrag.chunking import Chunker, Document
from shardrag.embedding.base import Embedder
from shardrag.embedding.reuse import VectorPool, embed_reusing
from shardrag.lexical_units import LexicalUnit, lexical_units
from shardrag.placement import HashPlacement, Placement
from shardrag.records import Chunk, EmbeddedChunk, Record, SparseVector
from shardrag.row_identity import SEPARATOR, by_model, row_id
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
    #: Chunks already stored exactly as they would be written (``shardrag.row_identity``): neither embedded nor
    #: written again.
    kept: int = 0
    #: The row id of each of the document's chunks, in order.
    ids: list[str] = []
    #: Per shard, the rows this run wrote (a run that loses its lease must know what it may have left behind).
    written: dict[int, list[str]] = {}


class Plan:
    """Documents cut into chunks with their row ids and BM25 sides (:meth:`DocumentIndexer.plan`)."""

    def __init__(
        self,
        documents: list[tuple[Document, int]],
        chunks: list[Chunk],
        texts: list[str],
        sparse: list[SparseVector],
    ) -> None:
        #: Each document and how many of ``chunks`` (in order) are its.
        self.documents = documents
        self.chunks = chunks
        #: What the model embeds for each chunk.
        self.texts = texts
        self.sparse = sparse

    def batches(self, size: int) -> Iterator[Plan]:
        """The plan in consecutive pieces of at most ``size`` chunks (a document may span pieces)."""
        owners = [doc for doc, count in self.documents for _ in range(count)]
        for start in range(0, len(self.chunks), size):
            end = min(start + size, len(self.chunks))
            counts: dict[str, list[Any]] = {}
            for doc in owners[start:end]:
                counts.setdefault(doc.doc_id, [doc, 0])[1] += 1
            yield Plan(
                [(doc, count) for doc, count in counts.values()],
                self.chunks[start:end],
                self.texts[start:end],
                self.sparse[start:end],
            )


class MeanLength:
    """The mean length of the lexical units that a document's BM25 weights use, shared by all its batches: fixed
    by the first (the corpus as stored without ``replacing``, the tokens and units its earlier version counted,
    plus that batch's units) or given (a resumed write reuses the one it recorded). A document's rows are
    therefore the same whatever order its parts land in and whatever it replaced: what lets an overwrite keep
    them."""

    def __init__(self, value: float | None = None, *, replacing: tuple[int, int] = (0, 0)) -> None:
        self.value = value
        self.replacing = replacing


class Reusable(Record):
    """A document's earlier chunks whose vectors may be reused: the shards that hold them (the registry knows).
    Only rows whose id says the indexer's model computed them are used (``row_identity.by_model``)."""

    shards: list[int]


#: Earlier chunks read for reuse lie within this many positions of the new chunks' range (an edit that adds or
#: removes paragraphs moves the chunks after it by about as many positions; a larger move only costs embeddings).
REUSE_POSITION_MARGIN = 256


class DocumentIndexer:
    """Writes documents so that answers never lose them mid-update: the new version's rows are upserted before
    the previous version's are deleted, and a row already stored exactly as it would be written is kept."""

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
        embedding reuse off (rows are then never reused across processes either: their ids name no model)."""
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

    def _fix_mean(self, mean: MeanLength, tenant: str, adding: Sequence[str]) -> float:
        """Fix ``mean`` (if not yet): the mean unit length, on the grid, of ``tenant``'s corpus as stored without
        ``mean.replacing`` (the document's own earlier version) and with ``adding`` (its first units' texts)."""
        if mean.value is None:
            mean.value = self._bm25.avgdl or self._measured_mean(tenant, mean.replacing, self._bm25.lengths(adding))
        return mean.value

    def _measured_mean(self, tenant: str, replacing: tuple[int, int], lengths: Sequence[int]) -> float:
        corpus = self._corpus_stats(tenant) if self._corpus_stats is not None else None
        tokens, units = replacing
        if corpus is not None:
            tokens = max(0, corpus.tokens - tokens)
            units = max(0, corpus.measured - units)
            corpus = CorpusStats(tokens=tokens, measured=units) if units else None
        return grid_mean(measured_avgdl(corpus, lengths))

    def run(
        self,
        documents: Sequence[Document],
        *,
        flush: bool = True,
        previous: Mapping[str, Sequence[int]] | None = None,
        sweep: bool = True,
        reuse: Mapping[str, Reusable] | None = None,
        stored: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
        mean: MeanLength | None = None,
        epoch: int = 0,
    ) -> list[IndexResult]:
        """Index ``documents``; ``previous``: the shards the registry recorded for a document's earlier version,
        swept for its stale chunks together with the new ones (a document missing from it is swept wherever the
        placement rule says it may be: its hash shard, or under centroid placement every shard). ``sweep``
        False: upsert only (a large object written in parts is swept once, after its last part). ``reuse``:
        per document, earlier chunks whose vectors are taken for new chunks with the same embedded text.
        ``stored``: per document, the row ids already stored and their shards; a chunk whose row is among them
        is kept as it is. ``mean``: the mean unit length that one document's batches share (fixed by the first);
        default: each batch measures its own. ``epoch``: the epoch the rows are written under
        (``shardrag.visibility``)."""
        return self.write(
            self.plan(documents, mean=mean, epoch=epoch),
            flush=flush,
            previous=previous,
            sweep=sweep,
            reuse=reuse,
            stored=stored,
        )

    def embedding_text(self, chunk: Chunk) -> str:
        """What the model embeds for ``chunk`` (its title prefixed when configured)."""
        return self._chunker.embedding_text(chunk)

    def plan(self, documents: Sequence[Document], *, mean: MeanLength | None = None, epoch: int = 0) -> Plan:
        """Chunk ``documents`` and compute each chunk's BM25 side and row id: everything but the dense vectors,
        which :meth:`write` computes for the rows not stored yet. The rows are written under ``epoch``, which is
        not part of their ids (the same content under another epoch is the same row)."""
        cut = [(doc, self._chunker.run(doc)) for doc in documents]
        chunks = [chunk for _, doc_chunks in cut for chunk in doc_chunks]
        texts = [self._chunker.embedding_text(chunk) for chunk in chunks]
        units = [
            lexical_units(
                doc,
                doc_chunks,
                window=self._bm25.window,
                tokenizer=self._bm25.tokenizer,
                embedding_text=self._chunker.embedding_text,
            )
            for doc, doc_chunks in cut
        ]
        unit_texts = [unit.text for doc_units in units for unit in doc_units]
        fixed = self._fix_mean(mean, chunks[0].tenant, unit_texts) if mean is not None and chunks else None
        # BM25 indexes what the model embeds (title prefixed): 0.685 vs 0.650 nDCG@10 (bench/hybrid_study.py).
        sparse = self._sparse(cut, units, fixed)
        ids = [
            row_id(chunk, model_id=self.model_id, embedded_text=text, sparse=vector)
            for chunk, text, vector in zip(chunks, texts, sparse, strict=True)
        ]
        chunks = [
            chunk.model_copy(update={"chunk_id": cid, "version": cid.rpartition(SEPARATOR)[2], "epoch_from": epoch})
            for chunk, cid in zip(chunks, ids, strict=True)
        ]
        return Plan([(doc, len(doc_chunks)) for doc, doc_chunks in cut], chunks, texts, sparse)

    def write(
        self,
        plan: Plan,
        *,
        flush: bool = True,
        previous: Mapping[str, Sequence[int]] | None = None,
        sweep: bool = True,
        reuse: Mapping[str, Reusable] | None = None,
        stored: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
    ) -> list[IndexResult]:
        """Write a :meth:`plan` (see :meth:`run`)."""
        chunks, texts, sparse = plan.chunks, plan.texts, plan.sparse
        ids = [chunk.chunk_id for chunk in chunks]
        planned = plan.documents
        found = [(stored or {}).get(chunk.doc_id, {}).get(cid) for chunk, cid in zip(chunks, ids, strict=True)]
        todo = [i for i, where in enumerate(found) if not where]
        # One embedding call for what is left of the batch: the embedder batches by length, which pads far less
        # than embedding document by document.
        pools = [self._pool([chunks[i] for i in todo], reuse)] if reuse and self.model_id and todo else []
        embedding = embed_reusing(self._embedder, [texts[i] for i in todo], pools)
        vectors = np.asarray(embedding.vectors, dtype=np.float32)
        placed = self._placement.place([chunks[i].doc_id for i in todo], vectors) if todo else []
        shards_of: list[list[int]] = [list(where or []) for where in found]
        by_shard: dict[int, list[EmbeddedChunk]] = {}
        for row, i in enumerate(todo):
            item = EmbeddedChunk(chunk=chunks[i], vector=[float(x) for x in embedding.vectors[row]], sparse=sparse[i])
            shards_of[i] = list(placed[row])
            for shard in placed[row]:
                by_shard.setdefault(shard, []).append(item)
        for shard, items in by_shard.items():
            self._store_for(shard).upsert(items)
        computed = dict(zip(todo, embedding.computed, strict=True))
        results = []
        touched: set[int] = set(by_shard)
        offset = 0
        for document, count in planned:
            rows = range(offset, offset + count)
            offset += count
            holders = list(dict.fromkeys(shard for i in rows for shard in shards_of[i]))
            home = self._placement.sweep(document.doc_id)
            mine = [ids[i] for i in rows]
            written: dict[int, list[str]] = {}
            for i in rows:
                if i in computed:
                    for shard in shards_of[i]:
                        written.setdefault(shard, []).append(ids[i])
            removed = 0
            if sweep:
                before = previous.get(document.doc_id, home) if previous is not None else home
                # New rows first (above), then the stale ones wherever the old or the new version may have put them.
                swept = list(dict.fromkeys([*holders, *before])) or home[:1]
                keep = set(mine)
                for shard in swept:
                    store = self._store_for(shard)
                    stale = [cid for cid in store.chunk_ids(document.doc_id) if cid not in keep]
                    removed += store.delete_chunks(stale) if stale else 0
                touched.update(swept)
            results.append(
                IndexResult(
                    doc_id=document.doc_id,
                    shard=holders[0] if holders else home[0],
                    chunks=count,
                    removed=removed,
                    shards=holders,
                    embedded=sum(1 for i in rows if computed.get(i)),
                    reused=sum(1 for i in rows if i in computed and not computed[i]),
                    kept=sum(1 for i in rows if i not in computed),
                    ids=mine,
                    written=written,
                )
            )
        if flush:
            # Milvus Lite searches unflushed (growing) data ~20x slower; seal after each batch.
            for shard in sorted(touched):
                self._store_for(shard).flush()
        return results

    def _sparse(
        self,
        cut: Sequence[tuple[Document, list[Chunk]]],
        units: Sequence[list[LexicalUnit]],
        fixed: float | None,
    ) -> list[SparseVector]:
        """The BM25 side of every chunk (in ``cut`` order), computed over the chunk's lexical unit
        (:mod:`shardrag.lexical_units`), with ``fixed`` as the mean unit length, or else measured: with a table
        (``corpus_stats``), the mean of the tenant's table with every unit of the batch's documents of that
        tenant added; without one, per document, over the document's own units.

        A table makes a document's rows depend on what was written before it anyway; adding the batch matters
        when the table is still empty: the first batch of a bulk load (``shardrag eval``: 250 documents a file,
        several files at once) would otherwise weigh each document against its own length, which turns length
        normalisation off for it (offline, the first 250 / 500 mtrag-mini documents so weighed: BM25 nDCG@10
        -0.012 / -0.029). Objects, whose rows an overwrite keeps, come with ``fixed`` (:class:`MeanLength`)."""
        out: list[SparseVector] = []
        means: dict[str, float | None] = {}
        if fixed is None and self._bm25.avgdl is None and self._corpus_stats is not None:
            for tenant in dict.fromkeys(document.tenant for document, _ in cut):
                texts = [
                    u.text
                    for (d, _), doc_units in zip(cut, units, strict=True)
                    if d.tenant == tenant
                    for u in doc_units
                ]
                means[tenant] = grid_mean(measured_avgdl(self._corpus_stats(tenant), self._bm25.lengths(texts)))
        for (document, _), doc_units in zip(cut, units, strict=True):
            # Units cover their document's chunks in order, so the encoded rows follow the chunks.
            out.extend(
                self._bm25.units(
                    [unit.text for unit in doc_units],
                    [len(unit.chunks) for unit in doc_units],
                    mean=fixed if fixed is not None else means.get(document.tenant),
                )
            )
        return out

    def _pool(self, chunks: Sequence[Chunk], reuse: Mapping[str, Reusable]) -> VectorPool:
        """The earlier vectors of the documents in ``reuse`` that this model computed, read from the store around
        the positions of ``chunks`` (the ones to write; bounded: a part of a large object reads its own range and
        a margin, never the whole document; a handful of edited chunks, a handful of positions)."""
        pool = VectorPool(self.model_id, self._embedder.dimension)
        for doc_id in dict.fromkeys(chunk.doc_id for chunk in chunks):
            source = reuse.get(doc_id)
            positions = [chunk.position for chunk in chunks if chunk.doc_id == doc_id]
            if source is None or not positions:
                continue
            # Positions move by as many chunks as were added or removed before them: never more than are new.
            margin = min(REUSE_POSITION_MARGIN, len(positions))
            window = (max(0, min(positions) - margin), max(positions) + margin)
            for shard in source.shards:
                for stored in self._store_for(shard).stored_chunks(doc_id, positions=window):
                    if by_model(stored.chunk.chunk_id, self.model_id):
                        pool.add(self._chunker.embedding_text(stored.chunk), stored.vector)
        return pool
