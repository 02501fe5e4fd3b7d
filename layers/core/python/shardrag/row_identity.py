"""A stored row's id is the digest of everything that determines the row.

An overwrite keeps every row it would write identically and writes only the others: a re-uploaded document with
one paragraph edited costs one chunk's embedding and one row's write, not the whole document's. For that to be
safe, "the same id" must mean "the same row": the id hashes the row's every field (text, position, title, source,
metadata, tenant, external id), its BM25 side exactly as encoded (so the mean length it was weighted with, and
whatever else the encoding depends on), and, for the dense side, the embedding model and the exact text it
embeds (title prefix included). A vector is a function of those two, so it needs no hashing.

The model also appears in the clear, as a tag at the front of the digest: a stored vector is reused for another
row only when its id says this model computed it (:func:`by_model`).
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Final

from shardrag.records import CHUNK_ID_SEPARATOR, Chunk, SparseVector

#: Changes whenever the rule below changes: rows of an older rule are then rewritten, never mistaken for equal.
RULE: Final = "row-1"
#: Separates the document id from the digest (a document id never contains it: ``shardrag.identity``).
SEPARATOR: Final = CHUNK_ID_SEPARATOR
_MODEL_TAG_HEX: Final = 8
_CONTENT_HEX: Final = 24


def model_tag(model_id: str) -> str:
    """32 bits of the model's identity, in the clear at the front of every row id it computed (a filter for
    reuse; the digest behind it covers the model in full)."""
    return hashlib.blake2b(f"{RULE}|{model_id}".encode(), digest_size=_MODEL_TAG_HEX // 2).hexdigest()


def row_id(chunk: Chunk, *, model_id: str, embedded_text: str, sparse: SparseVector | None) -> str:
    """The id of the row that stores ``chunk`` with the vector ``model_id`` gives ``embedded_text``, and ``sparse``.

    Strong (BLAKE2b, 96 bits of everything, the model included, beside the model tag): two different rows of a
    document sharing an id would let an overwrite keep the wrong one.
    """
    fields = json.dumps(
        [
            RULE,
            model_id,
            chunk.doc_id,
            chunk.tenant,
            chunk.external_id,
            chunk.source,
            chunk.title,
            chunk.position,
            chunk.text,
            embedded_text,
            chunk.metadata,
        ],
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
    ).encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(fields, digest_size=_CONTENT_HEX // 2)
    if sparse is not None:
        # Exact bits of what is encoded (float64 as computed; the store may narrow them, identically each time).
        digest.update(struct.pack(f"<{len(sparse.indices)}I", *sparse.indices))
        digest.update(struct.pack(f"<{len(sparse.values)}d", *sparse.values))
    return f"{chunk.doc_id}{SEPARATOR}{model_tag(model_id)}{digest.hexdigest()}"


def by_model(chunk_id: str, model_id: str) -> bool:
    """Whether the row ``chunk_id`` holds a vector that ``model_id`` computed (rows of an older id scheme: no)."""
    _, sep, tail = chunk_id.rpartition(SEPARATOR)
    return bool(sep) and len(tail) == _MODEL_TAG_HEX + _CONTENT_HEX and tail.startswith(model_tag(model_id))
