"""Model signatures, their wire form, and input validation.

Pure: no file I/O, no onnxruntime, no asyncio. :mod:`mesh.runtime.loading` reads the
files and asks onnxruntime what a model declares; this module (with
:mod:`mesh.core.models.manifest` for what a manifest declares) decides whether
all of that is consistent and whether a request's inputs fit a model.

A signature is a tuple of :class:`TensorSpec`. Shapes use ``None`` for a
dynamic dimension in Python and ``-1`` on the wire and in the manifest, the
convention of the Open Inference Protocol metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from mesh.core.models.fields import quoted, read_accuracy, read_bool, read_sha256, read_string
from mesh.errors import ConfigError, InvalidInput, ModelError, ProtocolError

__all__ = [
    "SUPPORTED_DTYPES",
    "ModelSource",
    "ModelSpec",
    "TensorSpec",
    "check_model_name",
    "dtype_from_onnx",
    "parse_tensor_list",
    "shape_from_onnx",
    "signature_mismatch",
    "validate_inputs",
]

ModelSource = Literal["manifest", "file"]

# onnxruntime's type strings for the tensor element types we serve. Strings,
# sequences and maps have no fixed-size numpy form and cannot travel as a
# wire tensor, so a model using them is not servable.
_ONNX_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
}

SUPPORTED_DTYPES: frozenset[str] = frozenset(dt.name for dt in _ONNX_TO_NUMPY.values())
"""Numpy dtype names a model input or output may have."""

# Names end up in URLs (/v2/models/{name}) and log lines, so keep them plain.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a model.

    ``dtype`` is always a native-byte-order numpy dtype from
    :data:`SUPPORTED_DTYPES`; ``shape`` has ``None`` for dynamic dimensions.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]

    def to_wire(self) -> dict[str, Any]:
        """``{"name": "X", "dtype": "float32", "shape": [-1, 64]}``."""
        return {
            "name": self.name,
            "dtype": self.dtype.name,
            "shape": [-1 if d is None else d for d in self.shape],
        }

    @classmethod
    def from_wire(cls, obj: object) -> TensorSpec:
        """Parse what :meth:`to_wire` produced (e.g. from a peer); ProtocolError if malformed."""
        try:
            return _tensor_spec_from_mapping(obj, "tensor spec", strict=False)
        except ConfigError as exc:
            raise ProtocolError(exc.message) from exc

    def describe(self) -> str:
        """Short human form for error messages: ``'X' (float32 [-1, 64])``."""
        return f"'{self.name}' ({self.dtype.name} {_shape_str(self.shape)})"


@dataclass(frozen=True)
class ModelSpec:
    """What a node tells others about a model it serves."""

    name: str
    version: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str = ""
    accuracy: float | None = None
    # A model only worth running on strong hardware: the mesh sends it to the
    # cloud gateway rather than to edge peers.
    compute_only: bool = False
    # "manifest" when the file was checked against a manifest entry, "file"
    # when it was found on disk and served as it is.
    source: ModelSource = "file"

    def to_wire(self) -> dict[str, Any]:
        """A msgpack/JSON-friendly map; ``accuracy`` only when known."""
        wire: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "inputs": [t.to_wire() for t in self.inputs],
            "outputs": [t.to_wire() for t in self.outputs],
            "description": self.description,
            "compute_only": self.compute_only,
            "source": self.source,
        }
        if self.accuracy is not None:
            wire["accuracy"] = self.accuracy
        return wire

    @classmethod
    def from_wire(cls, obj: object) -> ModelSpec:
        """Parse what :meth:`to_wire` produced (e.g. from a peer); ProtocolError if malformed."""
        try:
            return _model_spec_from_mapping(obj)
        except ConfigError as exc:
            raise ProtocolError(exc.message) from exc


# --- ONNX type mapping -------------------------------------------------------


def dtype_from_onnx(type_str: str) -> np.dtype[Any]:
    """Map an onnxruntime type string such as ``"tensor(float)"`` to a numpy dtype.

    Raises :class:`ModelError` for types we cannot serve (strings, sequences, maps).
    """
    dtype = _ONNX_TO_NUMPY.get(type_str)
    if dtype is None:
        supported = ", ".join(sorted(_ONNX_TO_NUMPY))
        raise ModelError(f"unsupported ONNX type {type_str!r}; supported types: {supported}")
    return dtype


def shape_from_onnx(shape: Sequence[object]) -> tuple[int | None, ...]:
    """Turn onnxruntime's shape list into ours.

    onnxruntime gives an int for a fixed dimension and a string (symbolic,
    ``"N"``) or None for a dynamic one; all dynamic forms become None.
    """
    return tuple(
        d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in shape
    )


# --- names and signatures ------------------------------------------------------


def check_model_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is usable as a model name."""
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid model name {name!r}: expected 1-128 characters of letters, digits,"
            " '.', '_' or '-', starting with a letter or digit"
        )


def signature_mismatch(
    declared: Sequence[TensorSpec], actual: Sequence[TensorSpec], kind: str
) -> str | None:
    """Describe how a declared signature differs from a model's own, or None if it agrees.

    Order is ignored (tensors are addressed by name); dtype and shape must be
    equal, dynamic dimensions included, so the manifest never promises a batch
    size the model cannot take. ``kind`` is ``"input"`` or ``"output"``.
    """
    want = {t.name: t for t in declared}
    have = {t.name: t for t in actual}
    if want.keys() != have.keys():
        return f"declared {kind}s {_names(want)} but the model has {kind}s {_names(have)}"
    for name, spec in want.items():
        real = have[name]
        if spec.dtype != real.dtype or spec.shape != real.shape:
            return (
                f"{kind} '{name}' is declared as {spec.describe()}"
                f" but the model has {real.describe()}"
            )
    return None


# --- input validation ---------------------------------------------------------


def validate_inputs(spec: ModelSpec, inputs: Mapping[str, object]) -> None:
    """Check request inputs against a model's signature; :class:`InvalidInput` if they don't fit.

    Checks, in order: names (missing and unexpected together, since a typo
    causes both), that each value is an ndarray, dtype (object arrays and
    non-native byte order are refused: onnxruntime would misread the bytes),
    rank, and every fixed dimension. Dynamic dimensions accept any size,
    zero included.
    """
    expected = {t.name for t in spec.inputs}
    missing = [t.name for t in spec.inputs if t.name not in inputs]
    unexpected = sorted(str(k) for k in inputs if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing input(s) {quoted(missing)}")
        if unexpected:
            parts.append(f"unexpected input(s) {quoted(unexpected)}")
        wanted = ", ".join(t.describe() for t in spec.inputs) or "none"
        raise InvalidInput(f"model '{spec.name}': {'; '.join(parts)}; expected inputs: {wanted}")
    for tensor in spec.inputs:
        _check_tensor(spec.name, tensor, inputs[tensor.name])


def _check_tensor(model: str, tensor: TensorSpec, value: object) -> None:
    where = f"input '{tensor.name}' of model '{model}'"
    if not isinstance(value, np.ndarray):
        raise InvalidInput(
            f"{where}: expected a numpy array of {tensor.dtype.name}, got {type(value).__name__}"
        )
    if value.dtype.hasobject:
        raise InvalidInput(
            f"{where}: expected dtype {tensor.dtype.name}, got an object array (not supported)"
        )
    if value.dtype != tensor.dtype:
        raise InvalidInput(
            f"{where}: expected dtype {tensor.dtype.name}, got {_dtype_str(value.dtype)}"
        )
    if value.ndim != len(tensor.shape):
        raise InvalidInput(
            f"{where}: expected {len(tensor.shape)} dimension(s) with shape"
            f" {_shape_str(tensor.shape)}, got {value.ndim} with shape {list(value.shape)}"
        )
    for axis, (want, got) in enumerate(zip(tensor.shape, value.shape, strict=True)):
        if want is not None and want != got:
            raise InvalidInput(
                f"{where}: expected shape {_shape_str(tensor.shape)}, got {list(value.shape)}"
                f" (dimension {axis} must be {want})"
            )


# --- parsing: the manifest's and the wire's tensor and model maps -----------------

_TENSOR_KEYS = frozenset({"name", "dtype", "shape"})


def parse_tensor_list(value: object, where: str, *, strict: bool = True) -> tuple[TensorSpec, ...]:
    """A signature from a list of ``{name, dtype, shape}`` maps; ConfigError if malformed.

    Names must be unique. ``strict`` refuses unknown keys (see below).
    """
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise ConfigError(f"{where}: expected an array of tables, got {type(value).__name__}")
    specs = tuple(
        _tensor_spec_from_mapping(item, f"{where}[{i}]", strict=strict)
        for i, item in enumerate(value)
    )
    names = [t.name for t in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}: duplicate tensor name(s) {quoted(duplicates)}")
    return specs


def _tensor_spec_from_mapping(obj: object, where: str, *, strict: bool = True) -> TensorSpec:
    """Shared by the manifest and the wire form; raises ConfigError.

    ``strict`` refuses unknown keys: in a manifest one is most likely a typo,
    while on the wire it is a newer peer's addition, to be let through.
    """
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(obj).__name__}")
    unknown = sorted(str(k) for k in set(obj) - _TENSOR_KEYS)
    if strict and unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {quoted(unknown)}; allowed: 'name', 'dtype', 'shape'"
        )
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: key 'name' must be a non-empty string, got {name!r}")
    where = f"{where} ('{name}')"
    dtype = obj.get("dtype")
    if not isinstance(dtype, str) or dtype not in SUPPORTED_DTYPES:
        raise ConfigError(
            f"{where}: key 'dtype' must be one of {quoted(sorted(SUPPORTED_DTYPES))}, got {dtype!r}"
        )
    shape = obj.get("shape")
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
        raise ConfigError(f"{where}: key 'shape' must be an array of integers, got {shape!r}")
    dims: list[int | None] = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < -1:
            raise ConfigError(
                f"{where}: key 'shape' must hold sizes >= 0, or -1 for a dynamic"
                f" dimension, got {list(shape)!r}"
            )
        dims.append(None if d == -1 else d)
    return TensorSpec(name=name, dtype=np.dtype(dtype), shape=tuple(dims))


def _model_spec_from_mapping(obj: object) -> ModelSpec:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"model spec: expected a map, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"model spec: 'name' must be a string, got {name!r}")
    check_model_name(name)
    where = f"model spec '{name}'"
    source = obj.get("source", "file")
    if source not in ("manifest", "file"):
        raise ConfigError(f"{where}: 'source' must be 'manifest' or 'file', got {source!r}")
    for key in ("inputs", "outputs"):
        if key not in obj:
            raise ConfigError(f"{where}: missing key '{key}'")
    return ModelSpec(
        name=name,
        version=read_string(obj, "version", where),
        sha256=read_sha256(obj, where),
        inputs=parse_tensor_list(obj["inputs"], f"{where}, key 'inputs'", strict=False),
        outputs=parse_tensor_list(obj["outputs"], f"{where}, key 'outputs'", strict=False),
        description=read_string(obj, "description", where, default=""),
        accuracy=read_accuracy(obj, where),
        compute_only=read_bool(obj, "compute_only", where, default=False),
        source="manifest" if source == "manifest" else "file",
    )


# --- message helpers ------------------------------------------------------------


def _shape_str(shape: Iterable[int | None]) -> str:
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


def _dtype_str(dtype: np.dtype[Any]) -> str:
    # numpy reports native order as "=" (or "|" for single bytes), so anything
    # else is foreign; its name alone would read like the expected dtype.
    if dtype.byteorder not in ("=", "|"):
        return f"{dtype.name} in non-native byte order ({dtype.str})"
    return dtype.name


def _names(tensors: Mapping[str, TensorSpec]) -> str:
    return quoted(sorted(tensors)) or "none"
