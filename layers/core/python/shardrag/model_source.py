"""The embedding model from S3, for a function that cannot carry it in a layer.

Lambda counts a function's code and layers against 250 MB unzipped. Ingest needs onnxruntime, pymilvus (with
pandas) and the model; with the model in a layer it had 3 MB left. It downloads the model instead, once per
container, into ``/tmp`` (~1 s at cold start for a worker that polls a queue; Embed, on the query path, keeps the
layer).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from shardrag import env
from shardrag.errors import ConfigurationError

#: Files a model directory must hold (what ``make model`` exports).
MODEL_FILES = ("model.onnx", "tokenizer.json")


def _split(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ConfigurationError(f"{env.MODEL_ARCHIVE} must be s3://bucket/key, not {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


def fetch_model_archive(uri: str, target: Path, *, client: Any | None = None) -> Path:
    """Download and unpack the model zip at ``uri`` into ``target`` (skipped when already there)."""
    if all((target / name).is_file() for name in MODEL_FILES):
        return target
    if client is None:
        import boto3

        client = boto3.client("s3")
    bucket, key = _split(uri)
    target.mkdir(parents=True, exist_ok=True)
    archive = target.with_suffix(".zip")
    client.download_file(bucket, key, str(archive))
    with zipfile.ZipFile(archive) as bundle:
        names = set(bundle.namelist())
        missing = [name for name in MODEL_FILES if name not in names]
        if missing:
            raise ConfigurationError(f"model archive {uri} lacks {missing}")
        for name in MODEL_FILES:
            bundle.extract(name, target)
    archive.unlink()
    return target


def use_model_archive(environ: dict[str, str] | None = None, *, client: Any | None = None) -> Path | None:
    """When ``SHARDRAG_MODEL_ARCHIVE`` is set: fetch it into ``/tmp/model`` and point ``SHARDRAG_MODEL_DIR`` there."""
    source = os.environ if environ is None else environ
    uri = source.get(env.MODEL_ARCHIVE)
    if not uri:
        return None
    target = fetch_model_archive(uri, Path(source.get("TMPDIR", "/tmp")) / "shardrag-model", client=client)
    source[env.MODEL_DIR] = str(target)
    return target
