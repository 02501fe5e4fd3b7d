"""Small index artefacts kept beside the vector store: BM25 term statistics, routing centroids.

Writers may run concurrently (several ingest Lambdas), so a write is a compare-and-swap on the artefact's
version tag: on S3 a conditional ``PutObject`` (``If-Match`` / ``If-None-Match: *``), on a local disk the same
check under a file lock. A lost race returns ``False`` and the caller re-reads and retries.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError

_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


@dataclass(frozen=True)
class Artifact:
    data: bytes
    etag: str


class ArtifactStore(Protocol):
    def get(self, name: str) -> Artifact | None:
        """The artefact and its version tag, or ``None`` if it does not exist."""
        ...

    def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
        """Write if the current version is ``expected_etag`` (``None``: only if absent); ``False`` on a race."""
        ...


class FileArtifactStore:
    """Artefacts as files under ``root`` (the local runtime keeps them beside the Milvus Lite shard files)."""

    def __init__(self, root: Path | str) -> None:
        self._root = Path(root)

    def _path(self, name: str) -> Path:
        path = (self._root / name).resolve()
        if not path.is_relative_to(self._root.resolve()):
            raise ValueError(f"artefact name {name!r} leaves the artefact folder")
        return path

    def get(self, name: str) -> Artifact | None:
        try:
            data = self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        return Artifact(data, hashlib.sha256(data).hexdigest())

    def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with (path.parent / ".lock").open("a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get(name)
            if (current.etag if current else None) != expected_etag:
                return False
            tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # readers see the old or the new file, never half of one
            return True


class S3ArtifactStore:
    """Artefacts as S3 objects under ``prefix`` (deployed: the index artefacts bucket)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    def get(self, name: str) -> Artifact | None:
        try:
            response = self._client.get_object(Bucket=self._bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return Artifact(response["Body"].read(), str(response["ETag"]))

    def put(self, name: str, data: bytes, *, expected_etag: str | None) -> bool:
        condition = {"IfMatch": expected_etag} if expected_etag is not None else {"IfNoneMatch": "*"}
        try:
            self._client.put_object(Bucket=self._bucket, Key=self._key(name), Body=data, **condition)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _CONFLICT_CODES:
                return False
            raise
        return True
