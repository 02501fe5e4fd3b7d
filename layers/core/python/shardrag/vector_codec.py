"""The query vector as it travels between states: base64 of little-endian float32, not a JSON list.

A 384-float list costs ~270 µs to serialise (shortest round-trip ``repr`` of every float) and is serialised or
copied at every state it passes through, deployed (Step Functions, each Lambda's payload) and locally (the
engine's quota checks and copies): measured at about a fifth of a local query's CPU. As one ~2 KB string it
costs a few µs and takes a third of the bytes of the 256 KiB state budget. The model computes float32, and the
store keeps float32, so nothing is lost.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator

_FLOAT32_LE = np.dtype("<f4")


def pack_vector(vector: Sequence[float] | np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype=_FLOAT32_LE).tobytes()).decode("ascii")


def unpack_vector(value: Any) -> Any:
    """A packed string becomes a list of floats; a list (a hand-made event, a test) passes through to the
    record's own validation."""
    if not isinstance(value, str):
        return value
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ValueError("vector: not base64 of float32 values") from exc
    if len(raw) % _FLOAT32_LE.itemsize:
        raise ValueError("vector: byte length is not a multiple of 4 (float32)")
    values = np.frombuffer(raw, dtype=_FLOAT32_LE)
    if not np.isfinite(values).all():
        raise ValueError("vector: non-finite value")
    return values.astype(np.float64).tolist()


#: A query vector field of a state record: accepts the packed form (what Embed emits) or a list of floats.
PackedVector = Annotated[list[float], BeforeValidator(unpack_vector)]
