"""Tensor codec: round trips for every dtype and shape, and every malformed tensor refused."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mesh.core.wire.tensors import WIRE_DTYPES, decode_tensor, decode_tensors, encode_tensor
from mesh.errors import InvalidInput

DTYPES = list(WIRE_DTYPES.values())


def wire_round_trip(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    packed = msgpack.packb(encode_tensor(array), use_bin_type=True)
    return decode_tensor(msgpack.unpackb(packed, raw=False))


@given(
    hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6),
    )
)
def test_round_trip_every_dtype_and_shape(array: np.ndarray[Any, Any]) -> None:
    decoded = wire_round_trip(array)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype(code) for code in (">f4", ">i8", ">u2")]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3),
    )
)
def test_big_endian_arrays_travel_as_little_endian(array: np.ndarray[Any, Any]) -> None:
    encoded = encode_tensor(array)
    assert encoded["dtype"].startswith("<")
    np.testing.assert_array_equal(wire_round_trip(array), array)


def test_non_contiguous_array_is_sent_in_c_order() -> None:
    array = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2].T
    np.testing.assert_array_equal(wire_round_trip(array), array)


def test_large_tensor_round_trip() -> None:
    array = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    np.testing.assert_array_equal(wire_round_trip(array), array)


def test_encoding_does_not_copy_contiguous_arrays() -> None:
    array = np.arange(16, dtype=np.float32)
    data = encode_tensor(array)["data"]
    assert isinstance(data, memoryview)
    assert np.shares_memory(np.frombuffer(data, dtype=np.float32), array)


def test_decoded_arrays_are_read_only_views() -> None:
    decoded = wire_round_trip(np.ones(4, dtype=np.float32))
    assert not decoded.flags.writeable


def good_map() -> dict[str, Any]:
    return {"dtype": "<f4", "shape": [2, 2], "data": bytes(16)}


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda m: m.update(dtype="|O"), "unsupported dtype"),
        (lambda m: m.update(dtype="<c8"), "unsupported dtype"),
        (lambda m: m.update(dtype=">f4"), "unsupported dtype"),
        (lambda m: m.update(dtype=7), "unsupported dtype"),
        (lambda m: m.update(shape=[2, -1]), "non-negative"),
        (lambda m: m.update(shape=[2.0, 2]), "non-negative"),
        (lambda m: m.update(shape=[True, 2]), "non-negative"),
        (lambda m: m.update(shape="2x2"), "shape must be a list"),
        (lambda m: m.update(shape=[1] * 33), "at most 32"),
        (lambda m: m.update(data=bytes(15)), "needs 16 bytes"),
        (lambda m: m.update(data=bytes(17)), "needs 16 bytes"),
        (lambda m: m.update(data="sixteen bytes..."), "must be binary"),
        (lambda m: m.update(shape=[2**40, 2**40]), "needs"),
        (lambda m: m.pop("data"), "missing ['data']"),
        (lambda m: m.update(extra=1), "unexpected ['extra']"),
    ],
)
def test_malformed_tensor_maps_are_refused(mutate: Any, fragment: str) -> None:
    tensor = good_map()
    mutate(tensor)
    with pytest.raises(InvalidInput, match=r"X") as caught:
        decode_tensor(tensor, name="X")
    assert fragment in caught.value.message


@pytest.mark.parametrize("value", [[1, 2], "tensor", None, 3.5])
def test_non_map_tensor_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match="expected a tensor map"):
        decode_tensor(value)


def test_inputs_must_be_a_map_of_names() -> None:
    with pytest.raises(InvalidInput, match="expected a map"):
        decode_tensors([good_map()])
    with pytest.raises(InvalidInput, match="names must be strings"):
        decode_tensors({b"X": good_map()})


def test_object_arrays_cannot_be_encoded() -> None:
    with pytest.raises(InvalidInput, match="cannot be sent"):
        encode_tensor(np.array([object()], dtype=object))
    with pytest.raises(InvalidInput, match="expected a numpy array"):
        encode_tensor([1, 2, 3])  # type: ignore[arg-type]


def test_one_byte_types_accept_either_byte_order_mark() -> None:
    for text in ("<u1", "|u1", "<i1", "|i1", "<b1", "|b1"):
        decoded = decode_tensor({"dtype": text, "shape": [1], "data": b"\x01"})
        assert decoded.itemsize == 1
