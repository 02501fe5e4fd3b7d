"""The answer cache through the local runtime: the real state machine (its AnswerCached choice), the real handlers,
S3 uploads indexed by the real ingest path. A repeated question is answered from the cache; an upload that changes
the answer is reflected on the very next query, and so is a delete."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def cached_runtime(local_runtime: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The package's runtime with the answer cache on, as ``cache.answers: true`` would build it: answers in
    memory, the index version in a file that the ingest service advances."""
    from shardrag import services
    from shardrag.caching import AnswerCaching, FileIndexVersion, MemoryAnswerCache

    version = FileIndexVersion(tmp_path / "index-version")
    settings = local_runtime.settings.model_copy(
        update={"cache": local_runtime.settings.cache.model_copy(update={"answers": True})}
    )
    answers = AnswerCaching(MemoryAnswerCache(max_entries=64, ttl_s=600), version, fingerprint="test")
    services.override(services.build_query_workflow(services.cached_settings(), answers=answers))
    monkeypatch.setattr(services.ingest_service(), "_on_change", version.advance)
    assert settings.cache.answers
    try:
        yield local_runtime
    finally:
        services.override(None)


def _ask(runtime: Any, question: str) -> dict[str, Any]:
    status, body = runtime.execute({"question": question, "top_k": 3, "mode": "bm25"})
    assert status == 200, body
    return body


def _upload(runtime: Any, key: str, text: str | None) -> None:
    from shardrag_local.runtime import DOCUMENTS_BUCKET

    s3 = runtime.aws.client("s3")
    if text is None:
        s3.delete_object(Bucket=DOCUMENTS_BUCKET, Key=key)
    else:
        s3.put_object(Bucket=DOCUMENTS_BUCKET, Key=key, Body=text.encode())
    assert runtime.ingestion.wait_idle(120)


def test_an_upload_that_changes_the_answer_is_reflected_on_the_very_next_query(cached_runtime: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    key = f"cache/heron-{tag}.txt"
    question = f"Where does the heron Zorblat{tag} spend the winter?"
    _upload(cached_runtime, key, f"The heron Zorblat{tag} spends every winter in Antarctica.")
    first = _ask(cached_runtime, question)
    assert first["cache"] == "miss" and "Antarctica" in json.dumps(first["hits"])
    again = _ask(cached_runtime, question)
    assert again["cache"] == "hit" and again["hits"] == first["hits"] and again["answer"] == first["answer"]

    _upload(cached_runtime, key, f"The heron Zorblat{tag} now spends every winter in Portugal.")
    changed = _ask(cached_runtime, question)
    assert changed["cache"] == "miss"
    assert "Portugal" in json.dumps(changed["hits"]) and "Antarctica" not in json.dumps(changed["hits"])
    assert _ask(cached_runtime, question)["cache"] == "hit"

    _upload(cached_runtime, key, None)
    gone = _ask(cached_runtime, question)
    assert gone["cache"] == "miss" and f"Zorblat{tag}" not in json.dumps(gone["hits"])
