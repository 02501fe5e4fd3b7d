"""Reading objects from the documents bucket in bounded byte ranges.

A Lambda function has a fixed memory size, so nothing here holds a whole object: text-like formats are
streamed range by range, and PDF (which needs random access) reads through :class:`RangeFile`, a seekable
file whose reads become ranged GETs with a small block cache.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from shardrag.ingestion.errors import Reason, Retryable

#: Error codes that mean the object (or its version) is gone, not that S3 failed.
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


class ObjectMissing(Exception):
    """The object is no longer in the bucket (deleted after the event was sent)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    content_type: str = ""
    content_encoding: str = ""
    #: User metadata (``x-amz-meta-*``), keys lower-cased as S3 returns them.
    metadata: Mapping[str, str] = field(default_factory=dict)


class ObjectSource(Protocol):
    """What ingestion needs from the bucket."""

    def head(self, bucket: str, key: str) -> ObjectInfo: ...

    def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end]`` (inclusive, like HTTP ranges)."""
        ...

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]: ...


def _classify(exc: Exception, what: str) -> Exception:
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            return ObjectMissing(what)
    return Retryable(Reason.DEPENDENCY, f"S3 {what}: {type(exc).__name__}: {exc}")


class S3ObjectSource:
    """:class:`ObjectSource` on boto3's S3 client (the real bucket, or moto locally)."""

    def __init__(self, client: Any) -> None:
        self._s3 = client

    def head(self, bucket: str, key: str) -> ObjectInfo:
        try:
            r = self._s3.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise _classify(exc, f"head {key}") from exc
        return ObjectInfo(
            key=key,
            size=int(r.get("ContentLength", 0)),
            etag=str(r.get("ETag", "")).strip('"'),
            content_type=str(r.get("ContentType", "") or ""),
            content_encoding=str(r.get("ContentEncoding", "") or ""),
            metadata={str(k).lower(): str(v) for k, v in (r.get("Metadata") or {}).items()},
        )

    def read_range(self, bucket: str, key: str, start: int, end: int) -> bytes:
        try:
            r = self._s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")
            return bytes(r["Body"].read())
        except (ClientError, BotoCoreError) as exc:
            raise _classify(exc, f"get {key} [{start}-{end}]") from exc

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(key=str(item["Key"]), size=int(item["Size"]), etag=str(item["ETag"]).strip('"'))


class Blob:
    """One object at one size, read in parts of ``part_bytes``."""

    def __init__(self, source: ObjectSource, bucket: str, info: ObjectInfo, part_bytes: int) -> None:
        self.source = source
        self.bucket = bucket
        self.info = info
        self.part_bytes = part_bytes

    @property
    def size(self) -> int:
        return self.info.size

    def parts(self) -> Iterator[bytes]:
        """The object's bytes in consecutive ranges of at most ``part_bytes``."""
        offset = 0
        while offset < self.info.size:
            end = min(self.info.size, offset + self.part_bytes) - 1
            data = self.source.read_range(self.bucket, self.info.key, offset, end)
            if not data:
                return
            yield data
            offset += len(data)

    def head_bytes(self, n: int) -> bytes:
        if self.info.size == 0:
            return b""
        return self.source.read_range(self.bucket, self.info.key, 0, min(n, self.info.size) - 1)

    def open(self, block_bytes: int = 256 * 1024, cache_blocks: int = 32) -> RangeFile:
        return RangeFile(self, block_bytes=block_bytes, cache_blocks=cache_blocks)


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over ranged GETs; at most ``cache_blocks`` blocks are kept in memory."""

    def __init__(self, blob: Blob, *, block_bytes: int, cache_blocks: int) -> None:
        super().__init__()
        self._blob = blob
        self._block = block_bytes
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_blocks = cache_blocks
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._blob.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _get_block(self, index: int) -> bytes:
        block = self._cache.get(index)
        if block is None:
            start = index * self._block
            end = min(self._blob.size, start + self._block) - 1
            block = self._blob.source.read_range(self._blob.bucket, self._blob.info.key, start, end)
            self._cache[index] = block
            if len(self._cache) > self._cache_blocks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return block

    def read(self, size: int | None = -1) -> bytes:
        end = self._blob.size if size is None or size < 0 else min(self._blob.size, self._pos + size)
        out = bytearray()
        while self._pos < end:
            index, within = divmod(self._pos, self._block)
            block = self._get_block(index)
            piece = block[within : within + (end - self._pos)]
            if not piece:
                break
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
