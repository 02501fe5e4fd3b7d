"""The whole Step Functions state of the largest valid request stays under the 256 KiB limit, in every mode and
on the largest deployed shard count: each state is built exactly as ``statemachines/query.asl.json`` builds it,
from the real stages, over shards whose chunks are as large as the store allows."""

from __future__ import annotations

import json
from typing import Any

import pytest
from shardrag.bm25 import Bm25Encoder, CorpusStats
from shardrag.chunking import Document
from shardrag.config import Settings
from shardrag.embedding.hashing import HashingEmbedder
from shardrag.errors import BadRequest
from shardrag.generation.extractive import ExtractiveGenerator
from shardrag.records import EmbeddedChunk, Hit, SearchRequest
from shardrag.request import MAX_QUESTION_CHARS, MAX_TOP_K
from shardrag.services import build_query_workflow
from shardrag.store.memory import InMemoryVectorStore
from shardrag.workflow import IDS_ONLY_MAX_HITS, MAX_FILTER_EXPR_BYTES, STATE_LIMIT_BYTES, QueryWorkflow

SHARDS = 8
EMBEDDER = HashingEmbedder(384)
# The largest question: 2,000 characters of distinct words, every one known to the corpus (each becomes a BM25
# query term that travels in the state).
WORDS = [f"w{i:04d}" for i in range(MAX_QUESTION_CHARS // 6)]
QUESTION = " ".join(WORDS)[:MAX_QUESTION_CHARS]


class Unfiltered(InMemoryVectorStore):
    """Answers as if every chunk matched the filter (the filter's size is what is measured here)."""

    def search(self, request: SearchRequest) -> list[Hit]:
        return super().search(request.model_copy(update={"filter_expr": ""}))

    def search_lexical(self, request: SearchRequest) -> list[Hit]:
        return super().search_lexical(request.model_copy(update={"filter_expr": ""}))


def _size(state: dict[str, Any]) -> int:
    return len(json.dumps(state, ensure_ascii=False).encode("utf-8"))


@pytest.fixture(scope="module")
def parts() -> tuple[list[Unfiltered], Bm25Encoder, CorpusStats]:
    stores = [Unfiltered(shard=i, dimension=EMBEDDER.dimension) for i in range(SHARDS)]
    encoder = Bm25Encoder()
    stats = CorpusStats()
    key = "k/" + "ü" * 500  # 1,002 bytes: as long as an S3 key gets
    for i in range(1600):
        text = " ".join(WORDS) + " " + "ж" * 1200  # two-byte characters, beyond the 2,000 a hit may carry
        doc = Document(doc_id=f"o-{i:032x}", external_id=f"{key}{i}", text=text, version="e" * 34)
        sparse = encoder.document(text)
        stats.count([sparse], +1)
        chunk = {
            "chunk_id": f"{doc.doc_id}::{doc.version}::{i:05d}",
            "doc_id": doc.doc_id,
            "text": text,
            "source": f"s3://{'b' * 63}/{doc.external_id}",
            "title": "τ" * 512,
            "external_id": doc.external_id,
            "metadata": {"tag": "x" * 4000, "year": 2024},
        }
        vector = [float(x) for x in EMBEDDER.embed([text])[0]]
        stores[i % SHARDS].upsert([EmbeddedChunk.model_validate({"chunk": chunk, "vector": vector, "sparse": sparse})])
    return stores, encoder, stats


def _build(parts: tuple[list[Unfiltered], Bm25Encoder, CorpusStats], answers: Any = None) -> QueryWorkflow:
    stores, encoder, stats = parts
    return build_query_workflow(
        Settings(
            store={"shard_count": SHARDS, "dimension": EMBEDDER.dimension},
            retrieval={"metadata_fields": {"tag": "string"}},
        ),
        embed=lambda text: [float(x) for x in EMBEDDER.embed([text])[0]],
        lexical=lambda text: encoder.query(text, stats),
        stores=stores.__getitem__,
        make_generator=ExtractiveGenerator,
        answers=answers,
    )


@pytest.fixture(scope="module")
def workflow(parts: tuple[list[Unfiltered], Bm25Encoder, CorpusStats]) -> QueryWorkflow:
    return _build(parts)


def _largest_filters() -> dict[str, Any]:
    """As many 100-character values as fit under the compiled-expression bound."""
    values: list[str] = []
    while len(values) < 100:
        candidate = [*values, f"{len(values):03d}" + "ö" * 97]
        clauses = " or ".join(f'metadata["tag"] == "{v}"' for v in candidate)
        if len(f"({clauses})".encode()) > MAX_FILTER_EXPR_BYTES:
            break
        values = candidate
    return {"tag": values}


def _fuse_state(workflow: QueryWorkflow, body: dict[str, Any]) -> dict[str, Any]:
    """The state FuseAndGenerate receives: Embed's selected output, ``route`` and every branch's result."""
    embedded = workflow.embed({"request": body, "caller": {"tenant": ""}, "started_at": "2026-11-30T00:00:00Z"})
    state = {k: embedded[k] for k in ("request", "vector", "sparse", "started_at", "timings_ms", "cached")}
    routed = workflow.route({"request": state["request"], "vector": state["vector"]})
    state["route"] = {k: routed[k] for k in ("selected", "shards", "took_ms")}
    state["shards"] = []
    for shard in range(SHARDS):
        found = workflow.search(
            {
                "shard": shard,
                "request": state["request"],
                "vector": state["vector"],
                "sparse": state["sparse"],
                "searched": routed["shards"],
            }
        )
        state["shards"].append({"shard": shard, "status": "ok", **found})
    return state


@pytest.mark.parametrize(
    "body",
    [
        {"mode": "hybrid", "top_k": MAX_TOP_K},
        {"mode": "dense", "top_k": MAX_TOP_K},
        {"mode": "bm25", "top_k": MAX_TOP_K},
        # The deepest ids-only rankings the resolver accepts on 8 shards (one list, and two for hybrid).
        {"mode": "dense", "top_k": IDS_ONLY_MAX_HITS // SHARDS, "include_text": False, "generate": False},
        {"mode": "hybrid", "top_k": IDS_ONLY_MAX_HITS // (2 * SHARDS), "include_text": False, "generate": False},
    ],
)
def test_the_largest_valid_request_keeps_every_state_under_the_limit(workflow: QueryWorkflow, body: dict) -> None:
    request = {"question": QUESTION, "filters": _largest_filters(), **body}
    state = _fuse_state(workflow, request)
    assert len(state["request"]["filter_expr"].encode()) > MAX_FILTER_EXPR_BYTES * 0.95
    if body["mode"] != "dense":
        assert len(state["sparse"]["indices"]) > 300
    assert sum(len(s["hits"]) + len(s["lexical"]) for s in state["shards"]) > 0
    assert _size(state) <= STATE_LIMIT_BYTES, f"{_size(state)} bytes"
    # The output FuseAndGenerate returns becomes the execution's output: the same limit.
    payload = {k: state[k] for k in ("request", "shards", "route", "started_at", "timings_ms")}
    assert _size(workflow.fuse_generate(payload)) <= STATE_LIMIT_BYTES


@pytest.mark.parametrize("mode", ["hybrid", "dense"])
def test_a_cached_answer_to_the_largest_valid_request_fits_the_state_it_travels_in(
    parts: tuple[list[Unfiltered], Bm25Encoder, CorpusStats], mode: str
) -> None:
    from shardrag.caching import AnswerCaching, MemoryAnswerCache, MemoryIndexVersion

    workflow = _build(
        parts, AnswerCaching(MemoryAnswerCache(max_entries=4, ttl_s=60), MemoryIndexVersion(), fingerprint="t")
    )
    request = {"question": QUESTION, "filters": _largest_filters(), "mode": mode, "top_k": MAX_TOP_K}
    state = _fuse_state(workflow, request)
    payload = {k: state[k] for k in ("request", "shards", "route", "started_at", "timings_ms")}
    assert workflow.fuse_generate(payload)["cache"] == "miss"
    hit = workflow.embed({"request": request, "caller": {"tenant": ""}, "started_at": "2026-11-30T00:00:00Z"})
    assert hit["cached"]["cache"] == "hit"
    # Embed's output is the state after it (ResultPath $), and CachedAnswer's output the execution's.
    assert _size(hit) <= STATE_LIMIT_BYTES, f"{_size(hit)} bytes"


def test_filters_that_compile_past_the_bound_are_a_400(workflow: QueryWorkflow) -> None:
    filters = _largest_filters()
    filters["tag"] = [*filters["tag"], "ö" * 100]
    with pytest.raises(BadRequest, match="too large"):
        workflow.embed({"request": {"question": "q", "filters": filters}, "caller": {"tenant": ""}})
