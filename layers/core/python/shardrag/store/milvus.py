"""VectorStore on Milvus through pymilvus ``MilvusClient``: Milvus Lite (``*.db``) or a Milvus/Zilliz server."""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pymilvus import MilvusClient
from shardrag.bm25 import EMPTY_MARKER
from shardrag.config import IndexSettings, ShardEndpoint
from shardrag.errors import ConfigurationError
from shardrag.records import (
    MAX_HIT_TEXT_CHARS,
    Chunk,
    EmbeddedChunk,
    Hit,
    SearchRequest,
    Snapshot,
    SparseVector,
    StoredTerms,
)
from shardrag.store.literals import escape_string
from shardrag.store.schema import (
    DENSE_FIELD,
    OUTPUT_FIELDS,
    SPARSE_FIELD,
    TITLE_MAX,
    build_schema,
    truncate_utf8,
)

#: The dense index's metric. The embedders return unit vectors (``Embedder``), for which inner product *is* cosine
#: similarity, and IP skips the per-search normalisation of every stored vector that COSINE does (on Milvus Lite
#: about a sixth of a shard's search CPU, measured with py-spy under load); the scores are the same.
DENSE_METRIC = "IP"
#: How far from 1 a vector's norm may be before it is normalised here (float32 unit vectors are within ~1e-6).
_UNIT_TOLERANCE = 1e-4


def unit(vector: Sequence[float]) -> Sequence[float]:
    """The vector scaled to unit length, so that inner product ranks as cosine; a vector that already is one
    (what every embedder returns) is passed through untouched, so a stored vector read back and written again
    stays bit for bit the same. A zero vector stays zero (it matches nothing, as under COSINE)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0.0 or abs(norm - 1.0) <= _UNIT_TOLERANCE:
        return vector
    return [x / norm for x in vector]


#: Milvus caps a query's result window; chunk-id listings page through it.
_QUERY_PAGE = 10_000
#: gRPC backs off reconnecting for up to 120 s by default, so a shard that was down for a minute could stay
#: unreachable long after it is back. A shard is a handful of endpoints, not a fleet: retry within a second.
_RECONNECT_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class MilvusVectorStore:
    """One shard's chunk collection.

    The client is created lazily and once (a Lambda container or a local runtime thread pool reuses it); a
    lock guards creation because Parallel branches call in from several threads in the local runtime.
    """

    def __init__(
        self,
        endpoint: ShardEndpoint,
        *,
        shard: int,
        dimension: int,
        index: IndexSettings,
        max_text_bytes: int = 8192,
        token: str | None = None,
        ca_pem: str | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._shard = shard
        self._dimension = dimension
        self._index = index
        self._max_text_bytes = max_text_bytes
        self._token = token
        self._ca_pem = ca_pem
        self._client: MilvusClient | None = None
        self._ready = False
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> ShardEndpoint:
        return self._endpoint

    def _connect(self) -> MilvusClient:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    if self._endpoint.is_lite:
                        Path(self._endpoint.uri).parent.mkdir(parents=True, exist_ok=True)
                    kwargs: dict[str, Any] = {"uri": self._endpoint.uri, "grpc_options": dict(_RECONNECT_OPTIONS)}
                    if self._token:
                        kwargs["token"] = self._token
                    if self._endpoint.db_name:
                        kwargs["db_name"] = self._endpoint.db_name
                    kwargs.update(self._tls_options())
                    self._client = MilvusClient(**kwargs)
        return self._client

    def _tls_options(self) -> dict[str, Any]:
        """One-way TLS against a private CA: pymilvus reads the roots from a file (``server_pem_path``), so the PEM
        goes to a private temporary file; ``server_name`` is the name the certificate was issued for."""
        options: dict[str, Any] = {}
        if self._ca_pem:
            with tempfile.NamedTemporaryFile("w", prefix="milvus-ca-", suffix=".pem", delete=False) as handle:
                handle.write(self._ca_pem)
            options.update(secure=True, server_pem_path=handle.name)
        if self._endpoint.server_name:
            options.update(secure=True, server_name=self._endpoint.server_name)
        return options

    @property
    def _collection(self) -> str:
        return self._endpoint.collection

    def ensure_ready(self) -> None:
        if self._ready:
            return
        client = self._connect()
        with self._lock:
            if self._ready:
                return
            if client.has_collection(self._collection):
                self._check_schema(client)
            else:
                index_params = client.prepare_index_params()
                index_params.add_index(
                    field_name=DENSE_FIELD,
                    index_type=self._index.type,
                    metric_type=DENSE_METRIC,
                    params=dict(self._index.params),
                )
                index_params.add_index(
                    field_name=SPARSE_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="IP", params={}
                )
                client.create_collection(
                    collection_name=self._collection,
                    schema=build_schema(self._dimension, self._max_text_bytes),
                    index_params=index_params,
                )
            # A collection comes back released after a restart: load it explicitly before searching.
            client.load_collection(self._collection)
            self._ready = True

    def _check_schema(self, client: MilvusClient) -> None:
        """An existing collection must have this release's fields: writing a different layout would fail row by
        row (or, worse, search a field that is not there), so refuse at start with what to do instead."""
        expected = {field.name for field in build_schema(self._dimension, self._max_text_bytes).fields}
        found = {str(field["name"]) for field in client.describe_collection(self._collection)["fields"]}
        if found != expected:
            raise ConfigurationError(
                f"collection {self._collection!r} at {self._endpoint.uri} has fields {sorted(found)}, this release "
                f"expects {sorted(expected)}: index into a new collection (store.collection) and reindex"
            )
        metric = client.describe_index(self._collection, index_name=DENSE_FIELD).get("metric_type")
        if metric != DENSE_METRIC:
            raise ConfigurationError(
                f"collection {self._collection!r} at {self._endpoint.uri} has a {metric} dense index, this release "
                f"searches with {DENSE_METRIC}: index into a new collection (store.collection) and reindex"
            )

    def reset(self) -> None:
        """Forget the connection so that the next call reconnects (after a shard restart)."""
        with self._lock:
            if self._client is not None:
                # Closing a connection to a stopped server may fail; there is nothing to keep from it.
                with contextlib.suppress(Exception):
                    self._client.close()
            self._client = None
            self._ready = False

    def _row(self, item: EmbeddedChunk) -> dict[str, Any]:
        chunk = item.chunk
        if len(item.vector) != self._dimension:
            raise ValueError(f"vector has {len(item.vector)} dimensions, the collection {self._dimension}")
        return {
            "chunk_id": chunk.chunk_id,
            "doc_id": chunk.doc_id,
            "tenant": chunk.tenant,
            "source": truncate_utf8(chunk.source, 2048),
            "title": truncate_utf8(chunk.title, TITLE_MAX),
            "text": truncate_utf8(chunk.text, self._max_text_bytes),
            "position": chunk.position,
            "version": chunk.version,
            "metadata": chunk.metadata,
            "external_id": chunk.external_id,
            "epoch_from": chunk.epoch_from,
            "epoch_to": chunk.epoch_to,
            DENSE_FIELD: unit(item.vector),
            SPARSE_FIELD: (item.sparse or EMPTY_MARKER).as_dict(),
        }

    def upsert(self, chunks: Sequence[EmbeddedChunk]) -> int:
        if not chunks:
            return 0
        self.ensure_ready()
        result = self._connect().upsert(self._collection, [self._row(c) for c in chunks])
        return int(result.get("upsert_count", len(chunks)))

    def delete_chunks(self, chunk_ids: Sequence[str]) -> int:
        if not chunk_ids:
            return 0
        self.ensure_ready()
        self._connect().delete(self._collection, ids=list(chunk_ids))
        return len(chunk_ids)

    def delete_document(self, doc_id: str, *, keep_version: str | None = None) -> int:
        return self.delete_chunks(self.chunk_ids(doc_id, keep_version=keep_version))

    def chunk_ids(self, doc_id: str, *, keep_version: str | None = None) -> list[str]:
        return self._query_ids(self._doc_filter(doc_id, keep_version))

    def stored_terms(self, chunk_ids: Sequence[str]) -> dict[str, StoredTerms]:
        if not chunk_ids:
            return {}
        self.ensure_ready()
        client = self._connect()
        found: dict[str, StoredTerms] = {}
        ids = list(chunk_ids)
        for start in range(0, len(ids), _QUERY_PAGE):
            rows = client.get(
                self._collection, ids=ids[start : start + _QUERY_PAGE], output_fields=[SPARSE_FIELD, "tenant"]
            )
            for row in rows:
                found[str(row["chunk_id"])] = StoredTerms(str(row["tenant"]), _sparse_from_milvus(row[SPARSE_FIELD]))
        return found

    @staticmethod
    def _doc_filter(doc_id: str, keep_version: str | None) -> str:
        expr = f"doc_id == {escape_string(doc_id)}"
        if keep_version is not None:
            expr += f" and version != {escape_string(keep_version)}"
        return expr

    def _query_ids(self, expr: str) -> list[str]:
        return [str(r["chunk_id"]) for r in self._query_rows(expr, ["chunk_id"])]

    def _query_rows(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching ``expr`` (those ``fields`` of it), in pages."""
        self.ensure_ready()
        client = self._connect()
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = client.query(self._collection, filter=expr, output_fields=fields, limit=_QUERY_PAGE, offset=offset)
            rows.extend(page)
            if len(page) < _QUERY_PAGE:
                return rows
            offset += _QUERY_PAGE

    def row_epochs(self, doc_id: str) -> dict[str, tuple[int, int]]:
        rows = self._query_rows(self._doc_filter(doc_id, None), ["chunk_id", "epoch_from", "epoch_to"])
        return {str(r["chunk_id"]): (int(r["epoch_from"]), int(r["epoch_to"])) for r in rows}

    def retired_at(self, epoch: int) -> list[str]:
        return self._query_ids(f"epoch_to == {int(epoch)}") if epoch else []

    def retire(self, chunk_ids: Sequence[str], epoch: int) -> int:
        if not chunk_ids:
            return 0
        self.ensure_ready()
        client = self._connect()
        ids = list(chunk_ids)
        done = 0
        for start in range(0, len(ids), _QUERY_PAGE):
            # The stored row as it is (not through ``Chunk``, which a cut text would not round-trip), re-stamped.
            rows = client.get(
                self._collection,
                ids=ids[start : start + _QUERY_PAGE],
                output_fields=[f.name for f in build_schema(self._dimension, self._max_text_bytes).fields],
            )
            stamped = [{**row, "epoch_to": int(epoch)} for row in rows]
            for row in stamped:
                row[SPARSE_FIELD] = {int(k): float(v) for k, v in row[SPARSE_FIELD].items()}
                row[DENSE_FIELD] = [float(x) for x in row[DENSE_FIELD]]
            if stamped:
                client.upsert(self._collection, stamped)
            done += len(stamped)
        return done

    def stored_chunks(self, doc_id: str, *, positions: tuple[int, int] | None = None) -> list[EmbeddedChunk]:
        expr = self._doc_filter(doc_id, None)
        if positions is not None:
            expr += f" and position >= {int(positions[0])} and position <= {int(positions[1])}"
        found: list[EmbeddedChunk] = []
        fields = [*OUTPUT_FIELDS, DENSE_FIELD, SPARSE_FIELD]
        for batch in self._iterate(expr, fields, 1000):
            for item in batch:
                chunk = item.chunk
                if not (_may_be_cut(chunk.text, self._max_text_bytes) or _may_be_cut(chunk.title, TITLE_MAX)):
                    found.append(item)
        return found

    def chunks_at(self, spans: Sequence[tuple[str, int, int]], *, snapshot: Snapshot | None = None) -> list[Chunk]:
        if not spans:
            return []
        self.ensure_ready()
        expr = " or ".join(
            f"({self._doc_filter(d, None)} and position >= {int(low)} and position <= {int(high)})"
            for d, low, high in spans
        )
        if snapshot is not None:
            expr = f"({expr}) and {snapshot.expr()}"
        limit = min(_QUERY_PAGE, sum(int(high) - int(low) + 1 for _, low, high in spans))
        rows = self._connect().query(self._collection, filter=expr, output_fields=list(OUTPUT_FIELDS), limit=limit)
        return [_chunk_from_milvus(row) for row in rows]

    def opening_vectors(self, doc_ids: Sequence[str], *, snapshot: Snapshot | None = None) -> dict[str, list[float]]:
        wanted = sorted(set(doc_ids))
        if not wanted:
            return {}
        self.ensure_ready()
        expr = f"doc_id in [{', '.join(escape_string(d) for d in wanted)}] and position == 0"
        if snapshot is not None:
            expr = f"({expr}) and {snapshot.expr()}"
        # One visible opening row per document; a limit above that only guards against a schema surprise.
        limit = min(_QUERY_PAGE, 4 * len(wanted))
        rows = self._connect().query(self._collection, filter=expr, output_fields=["doc_id", DENSE_FIELD], limit=limit)
        return {str(row["doc_id"]): [float(x) for x in row[DENSE_FIELD]] for row in rows}

    def dense_vectors(self, chunk_ids: Sequence[str]) -> dict[str, list[float]]:
        wanted = list(dict.fromkeys(chunk_ids))
        if not wanted:
            return {}
        self.ensure_ready()
        # By primary key: a point read, where a filtered query scans every row (Milvus Lite, 4,500 rows: 0.8 against
        # 4.2 ms, ``python -m bench.opening_read``).
        rows = self._connect().get(self._collection, ids=wanted, output_fields=["chunk_id", DENSE_FIELD])
        return {str(row["chunk_id"]): [float(x) for x in row[DENSE_FIELD]] for row in rows}

    def _iterate(self, expr: str, fields: list[str], batch_size: int) -> Iterator[list[EmbeddedChunk]]:
        self.ensure_ready()
        # A query iterator pages by primary key, so it neither skips nor repeats rows while it runs (and has no
        # offset window to outgrow).
        iterator = self._connect().query_iterator(
            self._collection, batch_size=batch_size, filter=expr, output_fields=fields
        )
        try:
            while rows := iterator.next():
                yield [_embedded_from_milvus(row) for row in rows]
        finally:
            iterator.close()

    def scan(self, batch_size: int = 1000) -> Iterator[list[EmbeddedChunk]]:
        return self._iterate("", [*OUTPUT_FIELDS, DENSE_FIELD, SPARSE_FIELD], batch_size)

    def search(self, request: SearchRequest) -> list[Hit]:
        return self._search(unit(request.vector), DENSE_FIELD, DENSE_METRIC, dict(self._index.search_params), request)

    def search_lexical(self, request: SearchRequest) -> list[Hit]:
        if request.sparse is None or not request.sparse.indices:
            return []  # no query term is in the corpus: nothing can match lexically
        return self._search(request.sparse.as_dict(), SPARSE_FIELD, "IP", {}, request)

    def _search(self, query: Any, field: str, metric: str, params: dict[str, Any], request: SearchRequest) -> list[Hit]:
        self.ensure_ready()
        try:
            results = self._connect().search(
                self._collection,
                data=[query],
                anns_field=field,
                limit=request.top_k,
                filter=_visible(request),
                output_fields=list(OUTPUT_FIELDS),
                search_params={"metric_type": metric, "params": params},
                # Also bounds pymilvus's reconnect retries, so that a stopped shard fails within it too.
                timeout=request.timeout_s,
            )
        except Exception as exc:
            if _needs_reconnect(exc):
                # A restarted Milvus comes back with the collection released, and a client whose recovery failed
                # while it was down may never retry: start afresh next time (connect, load the collection).
                self.reset()
            raise
        hits: list[Hit] = []
        for row in results[0] if results else []:
            entity = row.get("entity", row)
            hits.append(
                Hit(
                    chunk_id=str(entity.get("chunk_id", row.get("id"))),
                    doc_id=str(entity["doc_id"]),
                    score=float(row["distance"]),
                    text=str(entity["text"])[:MAX_HIT_TEXT_CHARS],
                    source=str(entity.get("source", "")),
                    title=str(entity.get("title", "")),
                    position=int(entity.get("position", 0)),
                    shard=self._shard,
                    metadata=dict(entity.get("metadata") or {}),
                    external_id=str(entity.get("external_id", "")),
                )
            )
        return hits

    def flush(self) -> None:
        self.ensure_ready()
        self._connect().flush(self._collection)

    def count(self) -> int:
        self.ensure_ready()
        rows = self._connect().query(self._collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def close(self) -> None:
        self.reset()


#: pymilvus error codes after which this client cannot search until it reconnects: the server could not be
#: reached (CONNECT_FAILED), or it answers but the collection is not loaded (a restarted server).
_RECONNECT_CODES = frozenset({2, 101})


def _visible(request: SearchRequest) -> str:
    """The request's filter, restricted to the rows its snapshot sees."""
    if request.snapshot is None:
        return request.filter_expr
    if not request.filter_expr:
        return request.snapshot.expr()
    return f"({request.filter_expr}) and {request.snapshot.expr()}"


def _needs_reconnect(exc: BaseException) -> bool:
    code = getattr(exc, "code", None)
    if callable(code):  # a raw grpc.RpcError
        return getattr(code(), "name", None) == "UNAVAILABLE"
    return code in _RECONNECT_CODES


def _may_be_cut(value: str, limit: int) -> bool:
    """Whether ``value`` read back may have been cut to ``limit`` bytes (a cut never splits a character, so a cut
    value can end up to three bytes short of the limit)."""
    return len(value.encode("utf-8")) > limit - 4


def _sparse_from_milvus(value: Any) -> SparseVector:
    """pymilvus returns a stored sparse row as ``{index: weight}``."""
    if isinstance(value, dict):
        return SparseVector.from_dict({int(k): float(v) for k, v in value.items()})
    raise TypeError(f"unexpected sparse row type {type(value).__name__}")


def _embedded_from_milvus(row: dict[str, Any]) -> EmbeddedChunk:
    return EmbeddedChunk(
        chunk=_chunk_from_milvus(row),
        vector=[float(x) for x in row[DENSE_FIELD]] if DENSE_FIELD in row else [],
        sparse=_sparse_from_milvus(row[SPARSE_FIELD]),
    )


def _chunk_from_milvus(row: dict[str, Any]) -> Chunk:
    return Chunk(
        chunk_id=str(row["chunk_id"]),
        doc_id=str(row["doc_id"]),
        text=str(row["text"]),
        source=str(row.get("source", "")),
        title=str(row.get("title", "")),
        position=int(row.get("position", 0)),
        version=str(row.get("version", "")),
        tenant=str(row.get("tenant", "default")),
        metadata=dict(row.get("metadata") or {}),
        external_id=str(row.get("external_id", "")),
        epoch_from=int(row.get("epoch_from", 0)),
        epoch_to=int(row.get("epoch_to", 0)),
    )
