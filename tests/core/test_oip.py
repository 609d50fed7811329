"""The Open Inference Protocol wire format: round trips, every refusal, and fuzzing."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mesh.core.models.signatures import ModelSpec, TensorSpec
from mesh.core.wire import oip
from mesh.errors import BadRequest, InvalidInput, MeshError, ProtocolError

Array = np.ndarray[Any, Any]


def sample(datatype: str) -> Array:
    """A 2x3 tensor of ``datatype`` reaching the type's extremes."""
    dtype = oip.DATATYPES[datatype]
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max, 0], [1, info.max - 1, 7]], dtype=dtype)
    info_f = np.finfo(dtype)
    return np.array([[info_f.min, info_f.max, -0.0], [np.inf, -np.inf, 1.5]], dtype=dtype)


def body(inputs: list[Any], **extra: Any) -> bytes:
    # list[Any], not list[dict]: some cases send inputs that are not objects on purpose.
    return json.dumps({"inputs": inputs, **extra}).encode()


def x_input(**fields: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "X", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    tensor.update(fields)
    return {k: v for k, v in tensor.items() if v is not None}


def assert_same(got: Array, want: Array) -> None:
    assert got.dtype == want.dtype.newbyteorder("=")
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(oip.DATATYPES))
def test_request_round_trip(datatype: str, binary: bool) -> None:
    array = sample(datatype)
    payload, length = oip.encode_infer_request(
        {"X": array, "Y": array[0]}, request_id="r-1", binary=binary
    )
    assert (length is not None) == binary
    parsed = oip.parse_infer_request(payload, length)
    assert_same(parsed.inputs["X"], array)
    assert_same(parsed.inputs["Y"], array[0])
    assert parsed.id == "r-1"
    assert parsed.binary_output is binary
    assert parsed.outputs is None


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(oip.DATATYPES))
def test_response_round_trip(datatype: str, binary: bool) -> None:
    array = sample(datatype)
    outputs = {"A": array, "B": array.T}  # B is not C-contiguous
    payload, length = oip.encode_infer_response(
        model="m",
        version="3",
        request_id="r-9",
        outputs=outputs,
        binary={"A", "B"} if binary else set(),
        parameters={"ran_on": "n1"},
    )
    assert (length is not None) == binary
    parsed = oip.parse_infer_response(payload, length)
    assert parsed.model_name == "m"
    assert parsed.model_version == "3"
    assert parsed.id == "r-9"
    assert parsed.parameters == {"ran_on": "n1"}
    assert list(parsed.outputs) == ["A", "B"]
    assert_same(parsed.outputs["A"], array)
    assert_same(parsed.outputs["B"], array.T)


def test_response_mixes_json_and_binary_outputs() -> None:
    outputs: dict[str, Array] = {"a": np.arange(3, dtype=np.int64), "b": np.ones(2, np.float32)}
    payload, length = oip.encode_infer_response(
        model="m", version=None, request_id=None, outputs=outputs, binary={"b"}
    )
    assert length is not None
    header = json.loads(payload[:length])
    assert header["outputs"][0]["data"] == [0, 1, 2]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    assert "model_version" not in header and "id" not in header
    assert payload[length:] == outputs["b"].tobytes()


def test_pure_json_response_has_no_header_length() -> None:
    payload, length = oip.encode_infer_response(
        model="m", version=None, request_id=None, outputs={"a": np.zeros(2)}, binary=()
    )
    assert length is None
    assert json.loads(payload)["outputs"][0] == {
        "name": "a",
        "datatype": "FP64",
        "shape": [2],
        "data": [0.0, 0.0],
    }


def test_big_endian_and_scalar_arrays_encode_little_endian() -> None:
    array = np.array([1, 256], dtype=">i4")
    payload, length = oip.encode_infer_request({"X": array, "S": np.array(5.0)}, binary=True)
    parsed = oip.parse_infer_request(payload, length)
    assert_same(parsed.inputs["X"], array.astype("<i4"))
    assert parsed.inputs["S"].shape == ()
    assert payload[length:][:8] == b"\x01\x00\x00\x00\x00\x01\x00\x00"


def test_nested_and_flat_json_data_agree() -> None:
    flat = oip.parse_infer_request(body([x_input(shape=[2, 3], data=[1, 2, 3, 4, 5, 6])]), None)
    nested = oip.parse_infer_request(
        body([x_input(shape=[2, 3], data=[[1, 2, 3], [4, 5, 6]])]), None
    )
    np.testing.assert_array_equal(flat.inputs["X"], nested.inputs["X"])
    assert nested.inputs["X"].shape == (2, 3)


def test_nan_and_infinity_literals_are_accepted_for_floats() -> None:
    raw = b'{"inputs":[{"name":"X","shape":[3],"datatype":"FP16","data":[NaN,Infinity,-Infinity]}]}'
    x = oip.parse_infer_request(raw, None).inputs["X"]
    assert np.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf


def test_zero_element_and_scalar_tensors() -> None:
    parsed = oip.parse_infer_request(
        body([x_input(shape=[0, 64], data=[]), x_input(name="S", shape=[], data=[3])]), None
    )
    assert parsed.inputs["X"].shape == (0, 64)
    assert parsed.inputs["S"].shape == () and parsed.inputs["S"] == 3


def test_binary_inputs_are_views_of_the_body_and_aligned() -> None:
    # An odd-length JSON header puts the tensor at an unaligned offset.
    x = np.arange(4, dtype=np.float64)
    payload, length = oip.encode_infer_request({"X": x}, request_id="odd", binary=True)
    parsed = oip.parse_infer_request(payload, length)
    assert parsed.inputs["X"].flags.aligned
    np.testing.assert_array_equal(parsed.inputs["X"], x)


def test_request_options() -> None:
    raw = body(
        [x_input()],
        id="abc",
        outputs=[{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}],
        parameters={"deadline_ms": 250, "binary_data_output": False, "custom": 1},
    )
    parsed = oip.parse_infer_request(raw, None)
    assert parsed.id == "abc"
    assert parsed.deadline_ms == 250.0
    assert parsed.outputs == (
        oip.RequestedOutput("a", True),
        oip.RequestedOutput("b", None),
    )
    assert parsed.parameters["custom"] == 1
    assert parsed.binary_outputs(["a", "b", "c"]) == {"a"}


def test_binary_outputs_default_to_the_request_flag() -> None:
    raw = body(
        [x_input()],
        outputs=[{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
        parameters={"binary_data_output": True},
    )
    parsed = oip.parse_infer_request(raw, None)
    assert parsed.binary_outputs(["a", "b"]) == {"b"}
    everything = oip.parse_infer_request(
        body([x_input()], parameters={"binary_data_output": True}), None
    )
    assert everything.binary_outputs(["a", "b"]) == {"a", "b"}


def test_encode_request_names_outputs() -> None:
    payload, length = oip.encode_infer_request(
        {"X": np.ones(1, np.float32)}, outputs=["p"], binary=False, parameters={"deadline_ms": 9}
    )
    assert length is None
    header = json.loads(payload)
    assert header["outputs"] == [{"name": "p", "parameters": {"binary_data": False}}]
    assert header["parameters"] == {"deadline_ms": 9, "binary_data_output": False}


# --- refusals: (description, body, header length, error class, words in the message) --

FP32 = {"name": "X", "datatype": "FP32"}
BAD_REQUESTS: list[tuple[str, bytes, int | None, type[MeshError], str]] = [
    ("not json", b"{nope", None, BadRequest, "not valid JSON"),
    ("not utf-8", b'{"inputs": "\xff"}', None, BadRequest, "not valid UTF-8"),
    ("binary without header", b'{"inputs":[]}\x00\xff', None, BadRequest, "Inference-Header"),
    ("not an object", b"[1, 2]", None, BadRequest, "must be an object, got a list"),
    ("deep nesting", b"[" * 100_000, None, BadRequest, "nested too deeply"),
    ("no inputs", b"{}", None, BadRequest, "'inputs' must be a non-empty list"),
    ("empty inputs", body([]), None, BadRequest, "non-empty list"),
    ("unknown key", body([x_input()], input=1), None, BadRequest, "unknown keys ['input']"),
    ("input not object", body([3]), None, BadRequest, "inputs[0] must be an object"),
    ("input no name", body([{"shape": [1]}]), None, BadRequest, "'name' must be"),
    ("unknown input key", body([x_input(dims=[1])]), None, BadRequest, "unknown keys ['dims']"),
    (
        "duplicate inputs",
        body([x_input(), x_input()]),
        None,
        BadRequest,
        "input 'X' is listed twice",
    ),
    ("unknown datatype", body([x_input(datatype="FLOAT")]), None, InvalidInput, "FP32, FP64"),
    ("BYTES", body([x_input(datatype="BYTES")]), None, InvalidInput, "numeric tensors only"),
    ("BF16", body([x_input(datatype="BF16")]), None, InvalidInput, "numeric tensors only"),
    ("datatype not str", body([x_input(datatype=1)]), None, BadRequest, "must be a string"),
    ("shape not list", body([x_input(shape=2)]), None, BadRequest, "list of non-negative"),
    ("negative dim", body([x_input(shape=[-1])]), None, BadRequest, "non-negative integers"),
    ("bool dim", body([x_input(shape=[True])]), None, BadRequest, "non-negative integers"),
    ("float dim", body([x_input(shape=[2.0])]), None, BadRequest, "non-negative integers"),
    ("rank 17", body([x_input(shape=[1] * 17, data=[1])]), None, InvalidInput, "at most 16"),
    ("huge dim", body([x_input(shape=[0, 2**40], data=[])]), None, InvalidInput, "dimension"),
    (
        "overflowing shape",
        body([x_input(shape=[2**31 - 1] * 16)]),
        None,
        InvalidInput,
        "more than a body of",
    ),
    (
        "count mismatch",
        body([x_input(shape=[2, 64], data=[0.5] * 127)]),
        None,
        InvalidInput,
        "input 'X': shape [2, 64] holds 128 elements but data has 127",
    ),
    ("data not list", body([x_input(data=1.0)]), None, BadRequest, "data must be a list"),
    ("no data", body([x_input(data=None)]), None, BadRequest, "neither 'data' nor"),
    (
        "ragged mix",
        body([x_input(shape=[3], data=[[1.0], 2.0, 3.0])]),
        None,
        BadRequest,
        "mixes lists and scalars",
    ),
    ("string in FP", body([x_input(data=[1.0, "2"])]), None, InvalidInput, "must be numbers"),
    ("bool in FP", body([x_input(data=[1.0, True])]), None, InvalidInput, "got True"),
    ("null in FP", body([x_input(data=[1.0, None])]), None, InvalidInput, "got None"),
    (
        "FP32 overflow",
        body([x_input(data=[1e39, 0.0])]),
        None,
        InvalidInput,
        "out of range for FP32",
    ),
    (
        "FP16 overflow",
        body([x_input(datatype="FP16", data=[70000, 0])]),
        None,
        InvalidInput,
        "out of range for FP16",
    ),
    (
        "huge int in FP64",
        body([x_input(datatype="FP64", data=[10**400, 0])]),
        None,
        InvalidInput,
        "too large for a float",
    ),
    (
        "float in INT32",
        body([x_input(datatype="INT32", data=[1, 2.0])]),
        None,
        InvalidInput,
        "INT32 data must be JSON integers, got 2.0",
    ),
    (
        "bool in INT8",
        body([x_input(datatype="INT8", data=[1, False])]),
        None,
        InvalidInput,
        "got False",
    ),
    (
        "UINT8 range",
        body([x_input(datatype="UINT8", data=[1, 256])]),
        None,
        InvalidInput,
        "256 is out of range for UINT8 (0..255)",
    ),
    (
        "UINT64 negative",
        body([x_input(datatype="UINT64", data=[-1, 0])]),
        None,
        InvalidInput,
        "-1 is out of range for UINT64",
    ),
    (
        "INT64 range",
        body([x_input(datatype="INT64", data=[2**63, 0])]),
        None,
        InvalidInput,
        "out of range for INT64",
    ),
    (
        "int in BOOL",
        body([x_input(datatype="BOOL", data=[1, 0])]),
        None,
        InvalidInput,
        "BOOL data must be true or false, got 1",
    ),
    ("header too long", body([x_input()]), 10_000, BadRequest, "expected 0.."),
    ("header negative", body([x_input()]), -1, BadRequest, "is -1"),
    (
        "leftover binary bytes",
        body([x_input()]) + b"\x00" * 4,
        len(body([x_input()])),
        BadRequest,
        "add up to 0 bytes but the binary section after the JSON header holds 4 bytes",
    ),
    (
        "missing binary bytes",
        body([{**FP32, "shape": [2], "parameters": {"binary_data_size": 8}}]) + b"\x00" * 4,
        len(body([{**FP32, "shape": [2], "parameters": {"binary_data_size": 8}}])),
        BadRequest,
        "add up to 8 bytes but the binary section after the JSON header holds 4 bytes",
    ),
    (
        "binary size vs shape",
        body([{**FP32, "shape": [2], "parameters": {"binary_data_size": 4}}]) + b"\x00" * 4,
        len(body([{**FP32, "shape": [2], "parameters": {"binary_data_size": 4}}])),
        InvalidInput,
        "shape [2] of FP32 needs 8 bytes but binary_data_size is 4",
    ),
    (
        "data and binary",
        body([x_input(parameters={"binary_data_size": 8})]) + b"\x00" * 8,
        len(body([x_input(parameters={"binary_data_size": 8})])),
        BadRequest,
        "both 'data' and parameters.binary_data_size",
    ),
    (
        "binary size not int",
        body([{**FP32, "shape": [1], "parameters": {"binary_data_size": "4"}}]),
        None,
        BadRequest,
        "binary_data_size must be a non-negative integer",
    ),
    (
        "bad BOOL byte",
        body(
            [{"name": "B", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}}]
        )
        + b"\x01\x02",
        len(
            body(
                [
                    {
                        "name": "B",
                        "datatype": "BOOL",
                        "shape": [2],
                        "parameters": {"binary_data_size": 2},
                    }
                ]
            )
        ),
        InvalidInput,
        "BOOL bytes must be 0 or 1",
    ),
    (
        "shared memory",
        body([x_input(parameters={"shared_memory_region": "r"})]),
        None,
        BadRequest,
        "shared memory",
    ),
    ("outputs not list", body([x_input()], outputs={}), None, BadRequest, "'outputs' must be"),
    ("output no name", body([x_input()], outputs=[{}]), None, BadRequest, "outputs[0] must"),
    (
        "duplicate outputs",
        body([x_input()], outputs=[{"name": "a"}, {"name": "a"}]),
        None,
        BadRequest,
        "output 'a' is listed twice",
    ),
    (
        "binary_data not bool",
        body([x_input()], outputs=[{"name": "a", "parameters": {"binary_data": 1}}]),
        None,
        BadRequest,
        "binary_data must be true or false",
    ),
    (
        "classification",
        body([x_input()], outputs=[{"name": "a", "parameters": {"classification": 3}}]),
        None,
        BadRequest,
        "classification extension",
    ),
    ("parameters not obj", body([x_input()], parameters=[1]), None, BadRequest, "an object"),
    (
        "binary_data_output",
        body([x_input()], parameters={"binary_data_output": "yes"}),
        None,
        BadRequest,
        "binary_data_output must be true or false",
    ),
    (
        "deadline zero",
        body([x_input()], parameters={"deadline_ms": 0}),
        None,
        BadRequest,
        "deadline_ms must be a positive number, got 0",
    ),
    (
        "deadline bool",
        body([x_input()], parameters={"deadline_ms": True}),
        None,
        BadRequest,
        "deadline_ms must be a positive number",
    ),
    ("id not str", body([x_input()], id=5), None, BadRequest, "'id' must be a string"),
    ("id too long", body([x_input()], id="x" * 129), None, BadRequest, "at most 128"),
]


@pytest.mark.parametrize(
    ("raw", "length", "error", "words"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_is_refused_with_a_helpful_message(
    raw: bytes, length: int | None, error: type[MeshError], words: str
) -> None:
    with pytest.raises(error) as caught:
        oip.parse_infer_request(raw, length)
    assert type(caught.value) is error
    assert words in caught.value.message


# --- responses from a remote server ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"<html>502</html>", "not valid JSON"),
        (b'{"outputs": []}', "'model_name' must be a string"),
        (b'{"model_name": "m"}', "'outputs' must be a list"),
        (b'{"model_name": "m", "model_version": 1, "outputs": []}', "'model_version'"),
        (
            b'{"model_name":"m","outputs":[{"name":"o","datatype":"BYTES","shape":[1],'
            b'"data":["a"]}]}',
            "numeric tensors only",
        ),
        (
            b'{"model_name":"m","outputs":[{"name":"o","datatype":"FP32","shape":[2],"data":[1]}]}',
            "holds 2 elements but data has 1",
        ),
    ],
)
def test_garbage_response_is_a_protocol_error(raw: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        oip.parse_infer_response(raw, None)
    assert type(caught.value) is ProtocolError
    assert words in caught.value.message


# --- metadata and errors --------------------------------------------------------------


def test_model_metadata_uses_v2_names_and_minus_one_for_dynamic_dims() -> None:
    spec = ModelSpec(
        name="digits",
        version="2",
        sha256="0" * 64,
        inputs=(TensorSpec("X", np.dtype(np.float32), (None, 64)),),
        outputs=(TensorSpec("label", np.dtype(np.int64), (None,)),),
    )
    metadata = oip.model_metadata(spec)
    assert metadata == {
        "name": "digits",
        "versions": ["2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    assert oip.parse_model_metadata(json.loads(json.dumps(metadata))) == metadata


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"versions": ["1"], "platform": "p", "inputs": [], "outputs": []},
        {"name": "m", "versions": [1], "platform": "p", "inputs": [], "outputs": []},
        {"name": "m", "platform": 3, "inputs": [], "outputs": []},
        {"name": "m", "platform": "p", "inputs": {}, "outputs": []},
        {"name": "m", "platform": "p", "inputs": [{"name": "x"}], "outputs": []},
        {
            "name": "m",
            "platform": "p",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}],
            "outputs": [],
        },
    ],
)
def test_malformed_metadata_is_a_protocol_error(obj: object) -> None:
    with pytest.raises(ProtocolError):
        oip.parse_model_metadata(obj)


def test_datatype_of() -> None:
    assert oip.datatype_of(np.dtype(">f8")) == "FP64"
    with pytest.raises(InvalidInput, match="complex128"):
        oip.datatype_of(np.dtype(np.complex128))


def test_error_body() -> None:
    assert json.loads(oip.error_body("bad \u00e9")) == {"error": "bad \u00e9"}
    assert json.loads(oip.error_body("x", "InvalidInput")) == {"error": "x", "code": "InvalidInput"}


# --- properties and fuzzing -------------------------------------------------------------

_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn) -> Array:
    datatype = draw(st.sampled_from(list(oip.DATATYPES)))
    dtype = oip.DATATYPES[datatype]
    one_byte = dtype.itemsize == 1
    endian: Literal["<", ">", "="] = "=" if one_byte else draw(st.sampled_from(("<", ">")))
    return draw(hnp.arrays(dtype.newbyteorder(endian), _shapes))


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.lists(tensors(), min_size=1, max_size=3),
    binary=st.booleans(),
)
def test_property_request_round_trip(arrays: list[Array], binary: bool) -> None:
    inputs = {f"in{i}": a for i, a in enumerate(arrays)}
    payload, length = oip.encode_infer_request(inputs, binary=binary)
    parsed = oip.parse_infer_request(payload, length)
    for name, array in inputs.items():
        np.testing.assert_array_equal(parsed.inputs[name], array)
        assert parsed.inputs[name].dtype == array.dtype.newbyteorder("=")


@settings(max_examples=60, deadline=None)
@given(arrays=st.lists(tensors(), min_size=0, max_size=3), data=st.data())
def test_property_response_round_trip(arrays: list[Array], data: st.DataObject) -> None:
    outputs = {f"out{i}": a for i, a in enumerate(arrays)}
    binary = data.draw(st.sets(st.sampled_from(list(outputs)))) if outputs else set()
    payload, length = oip.encode_infer_response(
        model="m", version=None, request_id=None, outputs=outputs, binary=binary
    )
    parsed = oip.parse_infer_response(payload, length)
    assert list(parsed.outputs) == list(outputs)
    for name, array in outputs.items():
        np.testing.assert_array_equal(parsed.outputs[name], array)


def parse_both(raw: bytes, length: int | None) -> None:
    """Parse as a request and as a response; anything but a MeshError fails the test."""
    with contextlib.suppress(MeshError):
        oip.parse_infer_request(raw, length)
    with contextlib.suppress(MeshError):
        oip.parse_infer_response(raw, length)


def _valid_bodies() -> list[tuple[bytes, int | None]]:
    arrays = {"X": sample("FP32"), "B": sample("BOOL"), "I": sample("INT16")}
    return [
        oip.encode_infer_request(arrays, binary=True, outputs=["a"]),
        oip.encode_infer_request(arrays, binary=False, request_id="q"),
    ]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.sampled_from(["X", "FP32", "BOOL", "INT8", "BYTES", "binary_data_size", ""]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    *("name", "shape", "datatype", "data", "parameters", "inputs", "outputs"),
                    *("id", "binary_data_size", "binary_data", "binary_data_output", "deadline_ms"),
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(_valid_bodies()),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=3)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
    length_shift=st.one_of(st.none(), st.integers(-20, 20)),
)
def test_fuzz_mutated_requests_raise_only_mesh_errors(
    base: tuple[bytes, int | None],
    edits: list[tuple[int, bytes]],
    cut: int | None,
    length_shift: int | None,
) -> None:
    raw, length = bytearray(base[0]), base[1]
    for position, replacement in edits:
        at = position % (len(raw) + 1)
        raw[at : at + len(replacement)] = replacement
    if cut is not None:
        del raw[cut % (len(raw) + 1) :]
    if length is not None and length_shift is not None:
        length += length_shift
    parse_both(bytes(raw), length)


_scalars = st.one_of(
    st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.just("1"), st.none()
)
# Tensor entries that are nearly right, so that fuzzing reaches the data decoding.
_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["X", "Y", "", 3]),
        "shape": st.lists(st.integers(-1, 2**33), max_size=4) | _json_values,
        "datatype": st.sampled_from([*oip.DATATYPES, "BYTES", "fp32", None]),
        "data": st.lists(_scalars, max_size=6)
        | st.lists(st.lists(_scalars, max_size=3), max_size=3)
        | _json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-1, 40) | _json_values}
        )
        | _json_values,
    },
)


@st.composite
def _consistent_entries(draw: st.DrawFn) -> dict[str, Any]:
    """An entry whose shape fits its data, so that only the values can be wrong."""
    data = draw(st.lists(_scalars, max_size=6))
    datatype = draw(st.sampled_from(list(oip.DATATYPES)))
    return {
        "name": draw(st.sampled_from(["X", "Y"])),
        "datatype": datatype,
        "shape": [len(data)],
        "data": data,
    }


@settings(max_examples=150, deadline=None)
@given(
    value=_json_values,
    entries=st.lists(_entries | _consistent_entries(), min_size=1, max_size=3),
    tail=st.binary(max_size=40),
)
def test_fuzz_structured_json_raises_only_mesh_errors(
    value: Any, entries: list[Any], tail: bytes
) -> None:
    for candidate in (value, {"inputs": entries}, {"model_name": "m", "outputs": entries}):
        header = json.dumps(candidate).encode()
        parse_both(header, None)
        parse_both(header + tail, len(header))


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=200), length=st.one_of(st.none(), st.integers(-5, 250)))
def test_fuzz_random_bytes_raise_only_mesh_errors(raw: bytes, length: int | None) -> None:
    parse_both(raw, length)
