"""Model signatures, manifest parsing and input validation (pure, no files)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from mesh.core.models.manifest import ManifestEntry, parse_manifest
from mesh.core.models.signatures import (
    ModelSpec,
    TensorSpec,
    check_model_name,
    dtype_from_onnx,
    shape_from_onnx,
    signature_mismatch,
    validate_inputs,
)
from mesh.errors import ConfigError, InvalidInput, ModelError, ProtocolError

F32 = np.dtype(np.float32)
I64 = np.dtype(np.int64)

SPEC = ModelSpec(
    name="digits-small",
    version="1",
    sha256="ab" * 32,
    inputs=(TensorSpec("X", F32, (None, 64)),),
    outputs=(
        TensorSpec("label", I64, (None,)),
        TensorSpec("probabilities", F32, (None, 10)),
    ),
    description="test",
    accuracy=0.97,
    source="manifest",
)

TWO_INPUTS = ModelSpec(
    name="two",
    version="1",
    sha256="cd" * 32,
    inputs=(TensorSpec("a", F32, (2, None)), TensorSpec("b", I64, ())),
    outputs=(TensorSpec("y", F32, (None,)),),
)


def _x(*shape: int, dtype: Any = np.float32) -> np.ndarray[Any, Any]:
    return np.zeros(shape, dtype=dtype)


# --- validate_inputs -------------------------------------------------------------

OK_CASES = [
    pytest.param(SPEC, {"X": _x(1, 64)}, id="one row"),
    pytest.param(SPEC, {"X": _x(300, 64)}, id="dynamic batch"),
    pytest.param(SPEC, {"X": _x(0, 64)}, id="empty batch"),
    pytest.param(
        SPEC,
        {"X": np.frombuffer(_x(2, 64).tobytes(), dtype=np.float32).reshape(2, 64)},
        id="read-only",
    ),
    pytest.param(SPEC, {"X": np.zeros((64, 2), np.float32).T}, id="non-contiguous"),
    pytest.param(SPEC, {"X": _x(1, 64, dtype="<f4")}, id="explicit little-endian"),
    pytest.param(
        TWO_INPUTS,
        {"b": np.array(3, dtype=np.int64), "a": _x(2, 0)},
        id="scalar and any order",
    ),
]


@pytest.mark.parametrize(("spec", "inputs"), OK_CASES)
def test_validate_inputs_accepts(spec: ModelSpec, inputs: dict[str, Any]) -> None:
    validate_inputs(spec, inputs)


BAD_CASES = [
    pytest.param(
        SPEC,
        {},
        ["model 'digits-small'", "missing input(s) 'X'", "'X' (float32 [-1, 64])"],
        id="missing",
    ),
    pytest.param(
        SPEC,
        {"X": _x(1, 64), "extra": _x(1)},
        ["unexpected input(s) 'extra'"],
        id="extra",
    ),
    pytest.param(
        SPEC,
        {"x": _x(1, 64)},
        ["missing input(s) 'X'", "unexpected input(s) 'x'"],
        id="wrong name reports both",
    ),
    pytest.param(
        SPEC,
        {"X": _x(1, 64, dtype=np.float64)},
        [
            "input 'X' of model 'digits-small': expected dtype float32, got float64",
        ],
        id="wrong dtype",
    ),
    pytest.param(
        SPEC,
        {"X": _x(1, 64, dtype=">f4")},
        ["expected dtype float32", "non-native byte order (>f4)"],
        id="big-endian",
    ),
    pytest.param(
        SPEC,
        {"X": _x(64)},
        ["expected 2 dimension(s) with shape [-1, 64], got 1 with shape [64]"],
        id="wrong rank",
    ),
    pytest.param(
        SPEC,
        {"X": _x(1, 1, 64)},
        ["expected 2 dimension(s)", "got 3"],
        id="too many dims",
    ),
    pytest.param(
        SPEC,
        {"X": _x(4, 63)},
        ["expected shape [-1, 64], got [4, 63] (dimension 1 must be 64)"],
        id="fixed dim mismatch",
    ),
    pytest.param(
        TWO_INPUTS,
        {"a": _x(3, 5), "b": np.array(1, dtype=np.int64)},
        ["input 'a'", "dimension 0 must be 2"],
        id="fixed leading dim",
    ),
    pytest.param(
        SPEC,
        {"X": np.empty((1, 64), dtype=object)},
        ["expected dtype float32, got an object array"],
        id="object dtype",
    ),
    pytest.param(
        SPEC,
        {"X": [[0.0] * 64]},
        ["expected a numpy array of float32, got list"],
        id="not an array",
    ),
    pytest.param(
        SPEC,
        {"X": np.array(["a"] * 64).reshape(1, 64)},
        ["expected dtype float32, got str"],
        id="string array",
    ),
]


@pytest.mark.parametrize(("spec", "inputs", "fragments"), BAD_CASES)
def test_validate_inputs_rejects(
    spec: ModelSpec, inputs: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_inputs(spec, inputs)
    for fragment in fragments:
        assert fragment in info.value.message


# --- dtype_from_onnx / shape_from_onnx --------------------------------------------


@pytest.mark.parametrize(
    ("onnx_type", "expected"),
    [
        ("tensor(float)", np.float32),
        ("tensor(double)", np.float64),
        ("tensor(float16)", np.float16),
        ("tensor(bool)", np.bool_),
        ("tensor(int8)", np.int8),
        ("tensor(int16)", np.int16),
        ("tensor(int32)", np.int32),
        ("tensor(int64)", np.int64),
        ("tensor(uint8)", np.uint8),
        ("tensor(uint16)", np.uint16),
        ("tensor(uint32)", np.uint32),
        ("tensor(uint64)", np.uint64),
    ],
)
def test_dtype_from_onnx(onnx_type: str, expected: Any) -> None:
    assert dtype_from_onnx(onnx_type) == np.dtype(expected)


@pytest.mark.parametrize(
    "onnx_type",
    [
        "tensor(string)",
        "seq(map(int64,tensor(float)))",
        "map(string,tensor(float))",
        "tensor(bfloat16)",
        "float",
        "",
    ],
)
def test_dtype_from_onnx_unsupported(onnx_type: str) -> None:
    with pytest.raises(ModelError, match="unsupported ONNX type"):
        dtype_from_onnx(onnx_type)


def test_shape_from_onnx_maps_every_dynamic_form_to_none() -> None:
    assert shape_from_onnx(["N", 64, None, -1, 0]) == (None, 64, None, None, 0)
    assert shape_from_onnx([]) == ()


# --- wire form ------------------------------------------------------------------


def test_tensor_spec_to_wire() -> None:
    spec = TensorSpec("X", F32, (None, 64))
    assert spec.to_wire() == {"name": "X", "dtype": "float32", "shape": [-1, 64]}
    assert TensorSpec.from_wire(spec.to_wire()) == spec


def test_model_spec_wire_round_trip() -> None:
    wire = SPEC.to_wire()
    assert wire["name"] == "digits-small"
    assert wire["accuracy"] == 0.97
    assert wire["compute_only"] is False
    assert wire["inputs"] == [{"name": "X", "dtype": "float32", "shape": [-1, 64]}]
    assert ModelSpec.from_wire(wire) == SPEC


def test_wire_form_lets_a_newer_peers_keys_through() -> None:
    # Liberal on the wire (a newer peer may add keys), strict in a manifest (a typo).
    wire = SPEC.to_wire()
    wire["inputs"] = [{**wire["inputs"][0], "layout": "NC"}]
    wire["quantized"] = True
    assert ModelSpec.from_wire(wire) == SPEC


def test_model_spec_wire_omits_unknown_accuracy() -> None:
    assert "accuracy" not in TWO_INPUTS.to_wire()


@pytest.mark.parametrize(
    "wire",
    [
        "digits",
        {"name": "x"},
        {**SPEC.to_wire(), "inputs": [{"name": "X", "dtype": "object", "shape": []}]},
        {**SPEC.to_wire(), "sha256": "nope"},
    ],
)
def test_model_spec_from_bad_wire(wire: object) -> None:
    with pytest.raises(ProtocolError):
        ModelSpec.from_wire(wire)


# --- signature_mismatch -------------------------------------------------------------


def test_signature_mismatch() -> None:
    x = TensorSpec("X", F32, (None, 64))
    assert signature_mismatch([x], [x], "input") is None
    renamed = signature_mismatch([x], [TensorSpec("input", F32, (None, 64))], "input")
    assert renamed is not None
    assert "'X'" in renamed
    assert "'input'" in renamed
    dtype = signature_mismatch([x], [TensorSpec("X", I64, (None, 64))], "input")
    assert dtype is not None
    assert "int64" in dtype
    fixed = signature_mismatch([x], [TensorSpec("X", F32, (1, 64))], "input")
    assert fixed is not None
    assert "[1, 64]" in fixed


# --- parse_manifest --------------------------------------------------------------

GOOD_MANIFEST: dict[str, Any] = {
    "dataset": {"file": "digits-test.npz", "sha256": "00" * 32, "samples": 450},
    "models": {
        "digits-small": {
            "version": "1",
            "file": "digits-small.onnx",
            "sha256": "AB" * 32,
            "description": "small",
            "accuracy": 0.97,
            "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 64]}],
            "outputs": [
                {"name": "label", "dtype": "int64", "shape": [-1]},
                {"name": "probabilities", "dtype": "float32", "shape": [-1, 10]},
            ],
        },
        "cnn-heavy": {
            "version": "2",
            "file": "cnn-heavy.onnx",
            "sha256": "cd" * 32,
            "compute_only": True,
        },
    },
}


def test_parse_manifest() -> None:
    entries = parse_manifest(GOOD_MANIFEST)
    assert set(entries) == {"digits-small", "cnn-heavy"}
    small = entries["digits-small"]
    assert small == ManifestEntry(
        name="digits-small",
        version="1",
        file="digits-small.onnx",
        sha256="ab" * 32,  # normalised to lower case
        description="small",
        accuracy=0.97,
        compute_only=False,
        inputs=(TensorSpec("X", F32, (None, 64)),),
        outputs=(
            TensorSpec("label", I64, (None,)),
            TensorSpec("probabilities", F32, (None, 10)),
        ),
    )
    heavy = entries["cnn-heavy"]
    assert heavy.compute_only is True
    assert heavy.inputs is None
    assert heavy.outputs is None
    assert heavy.accuracy is None
    assert heavy.description == ""


def _broken(model: str, key: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD_MANIFEST)
    if value is _DELETE:
        del data["models"][model][key]
    else:
        data["models"][model][key] = value
    return data


_DELETE = object()

MANIFEST_ERRORS = [
    pytest.param({}, ["[models.<name>]"], id="no models table"),
    pytest.param({"models": []}, ["[models.<name>]"], id="models not a table"),
    pytest.param({"models": {"bad name": {}}}, ["invalid model name 'bad name'"], id="name"),
    pytest.param({"models": {"m": 3}}, ["model 'm'", "expected a table"], id="entry type"),
    pytest.param(
        _broken("digits-small", "sha256", _DELETE),
        ["model 'digits-small'", "missing required key(s) 'sha256'"],
        id="missing sha256",
    ),
    pytest.param(
        _broken("digits-small", "sha256", "abc"),
        ["model 'digits-small'", "'sha256' must be 64 hex digits", "'abc'"],
        id="short sha256",
    ),
    pytest.param(
        _broken("digits-small", "version", 1),
        ["model 'digits-small'", "'version' must be a non-empty string", 'version = "1"'],
        id="version int",
    ),
    pytest.param(
        _broken("digits-small", "version", "1.0 beta"),
        ["manifest model 'digits-small', key 'version'", "'1.0 beta' is not a version"],
        id="version with a space",
    ),
    pytest.param(
        _broken("digits-small", "file", "../x.onnx"),
        ["'file' must be a relative path", "'../x.onnx'"],
        id="file escapes dir",
    ),
    pytest.param(
        _broken("digits-small", "file", "/abs/x.onnx"),
        ["'file' must be a relative path"],
        id="file absolute",
    ),
    pytest.param(
        _broken("digits-small", "file", "x.pt"),
        ["a .onnx file"],
        id="file not onnx",
    ),
    pytest.param(
        _broken("cnn-heavy", "file", "digits-small.onnx"),
        ["both use file 'digits-small.onnx'"],
        id="file shared",
    ),
    pytest.param(
        _broken("digits-small", "accuracy", 97),
        ["'accuracy' must be a number from 0 to 1", "97"],
        id="accuracy percent",
    ),
    pytest.param(
        _broken("digits-small", "accuracy", True),
        ["'accuracy' must be a number"],
        id="accuracy bool",
    ),
    pytest.param(
        _broken("digits-small", "compute_only", "yes"),
        ["'compute_only' must be true or false", "'yes'"],
        id="compute_only string",
    ),
    pytest.param(
        _broken("digits-small", "compute-only", True),
        ["model 'digits-small'", "unknown key(s) 'compute-only'", "allowed keys"],
        id="typo key",
    ),
    pytest.param(
        _broken("digits-small", "inputs", {"name": "X"}),
        ["key 'inputs'", "expected an array of tables"],
        id="inputs not a list",
    ),
    pytest.param(
        _broken("digits-small", "inputs", [{"name": "X", "dtype": "float", "shape": [1]}]),
        ["key 'inputs'", "('X')", "'dtype' must be one of", "'float32'", "got 'float'"],
        id="bad dtype name",
    ),
    pytest.param(
        _broken("digits-small", "inputs", [{"name": "X", "dtype": "float32", "shape": [-2]}]),
        ["'shape' must hold sizes >= 0, or -1"],
        id="bad dim",
    ),
    pytest.param(
        _broken("digits-small", "inputs", [{"name": "X", "dtype": "float32"}]),
        ["'shape' must be an array of integers"],
        id="no shape",
    ),
    pytest.param(
        _broken(
            "digits-small",
            "inputs",
            [{"name": "X", "dtype": "float32", "shape": [1], "layout": "NCHW"}],
        ),
        ["unknown key(s) 'layout'"],
        id="tensor typo key",
    ),
    pytest.param(
        _broken(
            "digits-small",
            "outputs",
            [
                {"name": "y", "dtype": "float32", "shape": [1]},
                {"name": "y", "dtype": "int64", "shape": [1]},
            ],
        ),
        ["key 'outputs'", "duplicate tensor name(s) 'y'"],
        id="duplicate output",
    ),
]


@pytest.mark.parametrize(("data", "fragments"), MANIFEST_ERRORS)
def test_parse_manifest_errors(data: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_manifest(data)
    for fragment in fragments:
        assert fragment in info.value.message


@pytest.mark.parametrize("name", ["digits-small", "m", "a.b_c-1", "X" * 128])
def test_check_model_name_ok(name: str) -> None:
    check_model_name(name)


@pytest.mark.parametrize("name", ["", "-x", ".hidden", "a b", "a/b", "é", "X" * 129])
def test_check_model_name_rejects(name: str) -> None:
    with pytest.raises(ConfigError):
        check_model_name(name)
