"""Tensors on the wire: numpy arrays as msgpack maps.

A tensor is the map ``{"dtype": "<f4", "shape": [1, 64], "data": <bin>}``:
the numpy dtype string (little-endian), the shape, and the raw bytes in C
order. Encoding hands msgpack the array's own buffer (no intermediate
``tobytes``); decoding wraps the received bytes with ``np.frombuffer``, so the
arrays it returns are read-only views. Object dtypes and pickles never cross
the wire.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mesh.errors import InvalidInput

__all__ = [
    "MAX_RANK",
    "WIRE_DTYPES",
    "Tensors",
    "decode_tensor",
    "decode_tensors",
    "encode_tensor",
    "encode_tensors",
]

# Named tensors, as a model takes and gives them: the one definition the
# runtime, the gateway client, the scheduler's messages and the SDK share.
Tensors = dict[str, np.ndarray[Any, Any]]

# The dtypes a tensor may carry, keyed by their canonical wire string
# (numpy's ``dtype.str`` for the little-endian form). One-byte types have no
# byte order, which numpy spells "|"; "<" is accepted for them too because
# writers in other languages naturally produce it.
WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    np.dtype(name).str: np.dtype(name)
    for name in (
        "bool",
        "int8",
        "uint8",
        "<i2",
        "<u2",
        "<i4",
        "<u4",
        "<i8",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
    )
}
_ALIASES: dict[str, np.dtype[Any]] = {
    **WIRE_DTYPES,
    "<b1": np.dtype("bool"),
    "<i1": np.dtype("int8"),
    "<u1": np.dtype("uint8"),
}
_TENSOR_KEYS = frozenset({"dtype", "shape", "data"})
_SENDABLE = frozenset((d.kind, d.itemsize) for d in WIRE_DTYPES.values())

# numpy itself stops at 64 dimensions; no model we serve needs more than a few.
MAX_RANK = 32


def _wire_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The little-endian twin of ``dtype``, or InvalidInput if it cannot travel."""
    if (dtype.kind, dtype.itemsize) not in _SENDABLE:
        raise InvalidInput(
            f"dtype {dtype} cannot be sent; supported: bool, int8-64, uint8-64, float16/32/64"
        )
    if dtype.byteorder == ">":
        return dtype.newbyteorder("<")
    return dtype


def encode_tensor(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """Encode ``array`` as a tensor map without copying a C-ordered little-endian array."""
    if not isinstance(array, np.ndarray):
        raise InvalidInput(f"expected a numpy array, got {type(array).__name__}")
    wire = _wire_dtype(array.dtype)
    if wire != array.dtype:
        array = array.astype(wire)
    # ascontiguousarray is a no-op for arrays that are already C-ordered.
    flat = np.ascontiguousarray(array).reshape(-1)
    return {
        "dtype": wire.str,
        "shape": list(array.shape),
        "data": flat.data.cast("B"),
    }


def encode_tensors(arrays: Mapping[str, np.ndarray[Any, Any]]) -> dict[str, dict[str, Any]]:
    """Encode a map of name to array."""
    return {name: encode_tensor(array) for name, array in arrays.items()}


def decode_tensor(obj: object, *, name: str = "tensor") -> np.ndarray[Any, Any]:
    """Decode a tensor map; ``name`` only makes error messages say which tensor."""
    if not isinstance(obj, dict):
        raise InvalidInput(
            f"{name}: expected a tensor map {{dtype, shape, data}}, got {type(obj).__name__}"
        )
    keys = set(obj)
    if keys != _TENSOR_KEYS:
        missing = sorted(str(k) for k in _TENSOR_KEYS - keys)
        extra = sorted(str(k) for k in keys - _TENSOR_KEYS)
        raise InvalidInput(
            f"{name}: a tensor map has exactly the keys dtype, shape, data"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    dtype_str = obj["dtype"]
    if not isinstance(dtype_str, str) or dtype_str not in _ALIASES:
        raise InvalidInput(
            f"{name}: unsupported dtype {dtype_str!r}; expected one of {sorted(WIRE_DTYPES)}"
        )
    dtype = _ALIASES[dtype_str]
    shape = obj["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise InvalidInput(
            f"{name}: shape must be a list of at most {MAX_RANK} non-negative integers, "
            f"got {shape!r}"
        )
    data = obj["data"]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"{name}: data must be binary (msgpack bin), got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"{name}: shape {shape} of {dtype.name} needs {expected} bytes of data, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode_tensors(obj: object, *, what: str = "inputs") -> dict[str, np.ndarray[Any, Any]]:
    """Decode a map of name to tensor map (a request's inputs, a reply's outputs)."""
    if not isinstance(obj, dict):
        raise InvalidInput(f"{what}: expected a map of name to tensor, got {type(obj).__name__}")
    decoded: dict[str, np.ndarray[Any, Any]] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidInput(f"{what}: tensor names must be strings, got {key!r}")
        decoded[key] = decode_tensor(value, name=f"{what}[{key!r}]")
    return decoded
