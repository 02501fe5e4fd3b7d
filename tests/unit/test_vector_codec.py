"""The query vector's packed form between states."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from shardrag.records import Record
from shardrag.vector_codec import PackedVector, pack_vector, unpack_vector

float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)


class _Carrier(Record):
    vector: PackedVector


@given(st.lists(float32s, max_size=512))
def test_a_float32_vector_survives_the_round_trip_exactly(values: list[float]) -> None:
    assert _Carrier.model_validate({"vector": pack_vector(values)}).vector == values


def test_a_list_still_validates_as_before() -> None:
    assert _Carrier.model_validate({"vector": [0.5, -1.0]}).vector == [0.5, -1.0]


@pytest.mark.parametrize(
    "bad",
    [
        "not base64!",
        base64.b64encode(b"\x00\x00\x80").decode(),  # 3 bytes: not float32s
        pack_vector([1.0, float("nan")]),
        pack_vector([float("inf")]),
    ],
)
def test_a_malformed_packed_vector_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        _Carrier.model_validate({"vector": bad})


def test_the_packed_form_is_smaller_than_the_json_list() -> None:
    vector = np.random.default_rng(0).normal(size=384).astype(np.float32)
    vector /= np.linalg.norm(vector)
    as_list = json.dumps([float(x) for x in vector])
    packed = json.dumps(pack_vector(vector))
    assert len(packed) * 3 < len(as_list)
    assert unpack_vector(json.loads(packed)) == [float(x) for x in vector]
