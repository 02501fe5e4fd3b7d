"""Stable placement of documents on shards."""

from __future__ import annotations

import hashlib


def shard_for(doc_id: str, shard_count: int) -> int:
    """The shard that holds every chunk of ``doc_id``.

    A cryptographic hash rather than Python's ``hash()``: the latter is salted per process, and placement must
    be identical in every Lambda container, in the local runtime and across releases.
    """
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count
