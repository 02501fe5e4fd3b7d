"""Ingest's model from S3: downloaded and unpacked once per container, then used like a local model directory."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from shardrag import env
from shardrag.errors import ConfigurationError
from shardrag.model_source import MODEL_FILES, fetch_model_archive, use_model_archive


class _S3:
    """download_file from a local zip, counting downloads."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.downloads: list[tuple[str, str]] = []

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        self.downloads.append((bucket, key))
        Path(filename).write_bytes(self.archive.read_bytes())


def _zip(path: Path, names: tuple[str, ...]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name in names:
            bundle.writestr(name, f"content of {name}")
    return path


def test_archive_is_fetched_once_and_the_model_dir_points_at_it(tmp_path: Path) -> None:
    s3 = _S3(_zip(tmp_path / "asset.zip", MODEL_FILES))
    environ = {env.MODEL_ARCHIVE: "s3://cdk-assets/abc123.zip", "TMPDIR": str(tmp_path / "tmp")}
    target = use_model_archive(environ, client=s3)
    assert target is not None and environ[env.MODEL_DIR] == str(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(MODEL_FILES)
    assert s3.downloads == [("cdk-assets", "abc123.zip")]
    # A warm container (or a second call) does not download again.
    use_model_archive(environ, client=s3)
    assert len(s3.downloads) == 1


def test_without_the_variable_nothing_happens(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert use_model_archive(environ, client=_S3(tmp_path / "unused.zip")) is None
    assert env.MODEL_DIR not in environ


def test_an_archive_without_the_model_is_a_configuration_error(tmp_path: Path) -> None:
    s3 = _S3(_zip(tmp_path / "asset.zip", ("tokenizer.json",)))
    with pytest.raises(ConfigurationError, match="lacks"):
        fetch_model_archive("s3://b/k.zip", tmp_path / "model", client=s3)


def test_a_malformed_uri_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="s3://bucket/key"):
        fetch_model_archive("https://example.com/model.zip", tmp_path / "model", client=None)
