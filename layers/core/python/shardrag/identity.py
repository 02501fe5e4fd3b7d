"""Document identity: what makes two indexed documents the same document.

An object's document and a JSON Lines line's document live in the same shards and the same registry, so their
ids must never collide: a line whose ``_id`` happened to equal another object's key once replaced (and, when
its file was deleted, removed) that object's chunks, across tenants too. The id is therefore derived from the
full identity, the kind, the tenant, the object key and for a line its own ``_id`` and hashed to a fixed
length, which also keeps every id (and every chunk id built on it) far below Milvus's 512-byte primary-key
limit whatever the key's length. What users see and filter on is the *external* id: the object key, or the
line's own ``_id``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final

#: Length of an internal document id: a kind letter, a dash and 32 hex digits (128 bits: collisions are not a
#: practical concern at any corpus size).
DOC_ID_CHARS: Final = 34
#: Bound on an external id in bytes (S3 caps keys at 1,024 bytes; a line's ``_id`` is held to half of that).
MAX_EXTERNAL_ID_BYTES: Final = 1024
MAX_LINE_ID_BYTES: Final = 512


def _digest(parts: list[str]) -> str:
    # JSON encoding of the list is unambiguous whatever the parts contain (no separator can be forged).
    return hashlib.blake2b(json.dumps(parts, ensure_ascii=False).encode("utf-8"), digest_size=16).hexdigest()


def object_doc_id(tenant: str, key: str) -> str:
    """The document of a whole object (text, Markdown, HTML, PDF) of ``tenant`` at ``key``."""
    return "o-" + _digest(["object", tenant, key])


def line_doc_id(tenant: str, key: str, line_id: str) -> str:
    """The document of one line of the bulk file at ``key`` whose ``_id`` is ``line_id``."""
    return "l-" + _digest(["line", tenant, key, line_id])
