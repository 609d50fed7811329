"""Tensors in the Open Inference Protocol: V2 datatypes, JSON data, binary data.

The building blocks of :mod:`mesh.core.wire.oip`, shared by requests and
responses: splitting a body into its JSON header and binary section,
checking one tensor entry's form, decoding its data (JSON lists or the
binary section, in entry order), and encoding arrays back. Errors are
:class:`BadRequest` for a malformed entry and :class:`InvalidInput` for a
well-formed one that cannot be what it claims; see :mod:`mesh.core.wire.oip` for
the rules.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.errors import BadRequest, InvalidInput

__all__ = [
    "DATATYPES",
    "JSON_ENCODER",
    "MAX_RANK",
    "TensorEntry",
    "assemble",
    "check_entry",
    "datatype_name",
    "datatype_of",
    "decode_entries",
    "dtype_of",
    "encode_tensors",
    "is_int",
    "json_kind",
    "no_duplicates",
    "split_body",
]

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""V2 datatype names and the numpy dtypes they travel as."""

# Keyed by (kind, itemsize) so that byte order does not matter.
_NAME_OF: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in DATATYPES.items()
}
_UNSUPPORTED = frozenset({"BYTES", "BF16"})
_SUPPORTED_LIST = ", ".join(DATATYPES)

MAX_RANK = 16
"""Most dimensions a tensor may have; real models use a handful."""
# One dimension may not exceed this (Triton's dims are int64; this keeps
# numpy's reshape far from its limits even for empty tensors).
_MAX_DIM = 2**31 - 1

_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
# NaN and infinities are written as JSON's NaN/Infinity extension, as Python
# and Triton do; refusing them would make a model's NaN output unanswerable.
JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=True, ensure_ascii=True)


# --- datatypes ----------------------------------------------------------------


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The V2 datatype name of a numpy dtype; InvalidInput if V2 cannot carry it."""
    name = _NAME_OF.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise InvalidInput(f"dtype {dtype} has no Open Inference Protocol datatype")
    return name


def dtype_of(datatype: object, where: str) -> np.dtype[Any]:
    """The numpy dtype of a V2 datatype name; InvalidInput lists the supported ones."""
    if not isinstance(datatype, str):
        raise BadRequest(f"{where}: datatype must be a string, got {json_kind(datatype)}")
    dtype = DATATYPES.get(datatype)
    if dtype is not None:
        return dtype
    if datatype in _UNSUPPORTED:
        raise InvalidInput(
            f"{where}: datatype {datatype} is not supported by edgemesh (numeric tensors only);"
            f" supported: {_SUPPORTED_LIST}"
        )
    raise InvalidInput(
        f"{where}: unknown datatype {datatype!r}; supported datatypes: {_SUPPORTED_LIST}"
    )


# --- shared tensor parsing --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """A tensor entry checked for form; its data not yet decoded."""

    name: str
    where: str
    shape: tuple[int, ...]
    count: int
    dtype: np.dtype[Any]
    data: Any
    binary_size: int | None


def split_body(body: bytes, header_length: int | None) -> tuple[dict[str, Any], memoryview]:
    """Split ``body`` into its JSON header (an object) and its binary section."""
    view = memoryview(body)
    if header_length is None:
        header, binary = view, view[len(view) :]
    else:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length} but the body has"
                f" {len(body)} bytes; expected 0..{len(body)}"
            )
        header, binary = view[:header_length], view[header_length:]
    # Binary tensor data sent without its header length is the usual cause
    # of an unreadable body; say so.
    hint = (
        " (a body with binary tensor data needs the Inference-Header-Content-Length header)"
        if header_length is None
        else ""
    )
    try:
        text = bytes(header).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the JSON header is not valid UTF-8 ({exc.reason} at byte {exc.start}){hint}"
        ) from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise BadRequest("the JSON header is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python allows
        extra = hint if str(exc).startswith("Extra data") else ""
        raise BadRequest(f"the body is not valid JSON: {exc}{extra}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"the JSON header must be an object, got {json_kind(obj)}")
    return obj, binary


def check_entry(obj: object, noun: str, index: int, body_size: int) -> TensorEntry:
    """Check one tensor object's form: name, shape, datatype, data or binary size."""
    if not isinstance(obj, dict):
        raise BadRequest(f"{noun}s[{index}] must be an object, got {json_kind(obj)}")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{noun}s[{index}]: 'name' must be a non-empty string, got {name!r}")
    where = f"{noun} '{name}'"
    unknown = set(obj) - _TENSOR_KEYS
    if unknown:
        raise BadRequest(
            f"{where}: unknown keys {sorted(unknown)}; expected {sorted(_TENSOR_KEYS)}"
        )
    dtype = dtype_of(obj.get("datatype"), where)
    shape, count = _check_shape(obj.get("shape"), where, body_size)
    binary_size = _binary_size(obj.get("parameters"), where)
    if binary_size is not None and "data" in obj:
        raise BadRequest(f"{where} has both 'data' and parameters.binary_data_size; give one")
    if binary_size is None and "data" not in obj:
        raise BadRequest(f"{where} has neither 'data' nor parameters.binary_data_size")
    return TensorEntry(name, where, shape, count, dtype, obj.get("data"), binary_size)


def _check_shape(shape: object, where: str, body_size: int) -> tuple[tuple[int, ...], int]:
    if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
        raise BadRequest(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{where}: shape has {len(shape)} dimensions; at most {MAX_RANK}")
    if any(d > _MAX_DIM for d in shape):
        raise InvalidInput(f"{where}: shape {shape} has a dimension over {_MAX_DIM}")
    count = math.prod(shape)
    # Every element takes at least one byte of the body, JSON or binary, so a
    # larger count is a lie; refusing it here means nothing huge is allocated.
    if count > body_size:
        raise InvalidInput(
            f"{where}: shape {shape} holds {count} elements, more than a body of"
            f" {body_size} bytes can carry"
        )
    return tuple(shape), count


def _binary_size(parameters: object, where: str) -> int | None:
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise BadRequest(f"{where}: parameters must be an object, got {json_kind(parameters)}")
    if "shared_memory_region" in parameters:
        raise BadRequest(f"{where}: the shared memory extension is not supported")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not is_int(size) or size < 0:
        raise BadRequest(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
    return int(size)


def decode_entries(
    entries: list[TensorEntry], binary: memoryview
) -> dict[str, np.ndarray[Any, Any]]:
    """Decode every entry's data: JSON lists, and the binary section in entry order."""
    sizes = [e.binary_size for e in entries if e.binary_size is not None]
    if sum(sizes) != len(binary):
        raise BadRequest(
            f"the binary data sizes add up to {sum(sizes)} bytes but the binary section after"
            f" the JSON header holds {len(binary)} bytes; they must be equal"
        )
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for entry in entries:
        if entry.binary_size is None:
            arrays[entry.name] = _from_json(entry)
        else:
            end = offset + entry.binary_size
            arrays[entry.name] = _from_binary(entry, binary[offset:end])
            offset = end
    return arrays


def _from_binary(entry: TensorEntry, chunk: memoryview) -> np.ndarray[Any, Any]:
    dtype = entry.dtype.newbyteorder("<")
    expected = entry.count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"{entry.where}: shape {list(entry.shape)} of {datatype_name(dtype)} needs"
            f" {expected} bytes but binary_data_size is {len(chunk)}"
        )
    array: np.ndarray[Any, Any] = np.frombuffer(chunk, dtype=dtype).reshape(entry.shape)
    if dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise InvalidInput(f"{entry.where}: BOOL bytes must be 0 or 1")
    if not array.flags.aligned:
        # A tensor placed at an odd offset of the body: onnxruntime wants aligned data.
        array = array.copy()
    return array


def _from_json(entry: TensorEntry) -> np.ndarray[Any, Any]:
    flat = _flatten(entry.data, entry.where)
    if len(flat) != entry.count:
        raise InvalidInput(
            f"{entry.where}: shape {list(entry.shape)} holds {entry.count} elements"
            f" but data has {len(flat)}"
        )
    # set(map(type, ...)) checks every element's JSON type at C speed.
    types = set(map(type, flat))
    kind = entry.dtype.kind
    if kind == "b":
        values = _typed(flat, types, {bool}, "true or false", entry)
    elif kind in "iu":
        values = _json_ints(flat, types, entry)
    else:
        values = _json_floats(flat, types, entry)
    return values.reshape(entry.shape)


def _flatten(data: object, where: str) -> list[Any]:
    """Flatten nested lists one level at a time (each level at C speed)."""
    if not isinstance(data, list):
        raise BadRequest(f"{where}: data must be a list, got {json_kind(data)}")
    flat: list[Any] = data
    for _ in range(MAX_RANK + 1):
        types = set(map(type, flat))
        if list not in types:
            return flat
        if types != {list}:
            raise BadRequest(f"{where}: data mixes lists and scalars at the same nesting level")
        flat = list(itertools.chain.from_iterable(flat))
    raise BadRequest(f"{where}: data is nested deeper than {MAX_RANK} levels")


def _typed(
    flat: list[Any], types: set[type], allowed: set[type], what: str, entry: TensorEntry
) -> np.ndarray[Any, Any]:
    bad = types - allowed
    if bad:
        example = next(v for v in flat if type(v) in bad)
        raise InvalidInput(
            f"{entry.where}: {datatype_name(entry.dtype)} data must be {what}, got {example!r}"
        )
    return np.array(flat, dtype=entry.dtype)


def _json_ints(flat: list[Any], types: set[type], entry: TensorEntry) -> np.ndarray[Any, Any]:
    bad = types - {int}
    if bad:
        example = next(v for v in flat if type(v) in bad)
        raise InvalidInput(
            f"{entry.where}: {datatype_name(entry.dtype)} data must be JSON integers,"
            f" got {example!r}"
        )
    if flat:
        info = np.iinfo(entry.dtype)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            culprit = low if low < info.min else high
            raise InvalidInput(
                f"{entry.where}: {culprit} is out of range for {datatype_name(entry.dtype)}"
                f" ({info.min}..{info.max})"
            )
    return np.array(flat, dtype=entry.dtype)


def _json_floats(flat: list[Any], types: set[type], entry: TensorEntry) -> np.ndarray[Any, Any]:
    bad = types - {int, float}
    if bad:
        example = next(v for v in flat if type(v) in bad)
        raise InvalidInput(
            f"{entry.where}: {datatype_name(entry.dtype)} data must be numbers, got {example!r}"
        )
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise InvalidInput(f"{entry.where}: an integer in data is too large for a float") from None
    limit = float(np.finfo(entry.dtype).max)
    finite = np.isfinite(wide)
    if wide.size and np.any(np.abs(wide[finite]) > limit):
        culprit = wide[finite][np.argmax(np.abs(wide[finite]))]
        raise InvalidInput(
            f"{entry.where}: {culprit!r} is out of range for {datatype_name(entry.dtype)}"
            f" (magnitude at most {limit!r})"
        )
    return wide.astype(entry.dtype)


# --- encoding ---------------------------------------------------------------------


def encode_tensors(
    arrays: Mapping[str, np.ndarray[Any, Any]], binary: Collection[str]
) -> tuple[list[dict[str, Any]], list[memoryview]]:
    """Tensor entries for a JSON header, and the binary chunks of those named in ``binary``."""
    entries: list[dict[str, Any]] = []
    chunks: list[memoryview] = []
    for name, array in arrays.items():
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in binary:
            # ascontiguousarray copies only when the array is not already C-ordered LE.
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            chunks.append(raw.reshape(-1).view(np.uint8).data)
            entry["parameters"] = {"binary_data_size": raw.nbytes}
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    return entries, chunks


def assemble(
    header: dict[str, Any], chunks: list[memoryview], *, any_binary: bool
) -> tuple[bytes, int | None]:
    """The body (JSON header then binary chunks) and the header length, None if not binary."""
    head = JSON_ENCODER.encode(header).encode("ascii")
    if not any_binary:
        return head, None
    return b"".join([head, *chunks]), len(head)


# --- helpers ----------------------------------------------------------------------


def no_duplicates(names: list[str], what: str) -> None:
    """BadRequest if a name appears twice; ``what`` is "input" or "output"."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadRequest(f"{what} '{name}' is listed twice; each {what} may appear once")
        seen.add(name)


def is_int(value: object) -> bool:
    """Whether ``value`` is a JSON integer (Python's bool is an int, JSON's is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def datatype_name(dtype: np.dtype[Any]) -> str:
    """The V2 name of ``dtype`` for messages, or numpy's name if it has none."""
    return _NAME_OF.get((dtype.kind, dtype.itemsize), str(dtype))


def json_kind(value: object) -> str:
    """A JSON-ish name for a value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
