"""The Open Inference Protocol (KServe V2 REST) wire format, both directions.

Pure: bytes in, arrays out, and back. The server side parses infer requests
and encodes infer responses; the gateway client encodes requests and parses
responses. Triton's binary tensor data extension is supported both ways: the
HTTP body is a JSON header of ``Inference-Header-Content-Length`` bytes
followed by the raw tensors, each tensor naming its share with
``parameters.binary_data_size``, in the order the tensors are listed.

Choices worth knowing:

* Only numeric tensors travel (``BYTES`` and ``BF16`` are refused): a model's
  inputs and outputs are fixed-size numpy types.
* JSON tensor data may be a flat row-major list or nested lists. Integer
  types take JSON integers only (no floats, no booleans), within the type's
  range; ``BOOL`` takes ``true``/``false``; float types take numbers,
  including the ``NaN``/``Infinity``/``-Infinity`` literals. A finite number
  too large for ``FP16``/``FP32`` is refused rather than rounded to infinity.
* Responses write NaN and infinities as those same literals (Python's and
  Triton's behaviour; strict JSON has no way to say them). A client that
  needs strict JSON asks for binary outputs.
* Binary tensors are little-endian in C order; ``BOOL`` is one byte (0 or 1)
  per element. Parsed binary tensors are read-only views of the body.
* Request parsing raises :class:`BadRequest` for a malformed message and
  :class:`InvalidInput` for a well-formed tensor that cannot be what it
  claims; response parsing raises :class:`ProtocolError` (the server answered
  something that is not a V2 response).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.core.models.signatures import ModelSpec, TensorSpec
from mesh.core.wire.oip_tensors import (
    DATATYPES,
    JSON_ENCODER,
    MAX_RANK,
    assemble,
    check_entry,
    datatype_of,
    decode_entries,
    encode_tensors,
    is_int,
    json_kind,
    no_duplicates,
    split_body,
)
from mesh.errors import BadRequest, MeshError, ProtocolError

__all__ = [
    "DATATYPES",
    "MAX_RANK",
    "MAX_REQUEST_ID_LENGTH",
    "PLATFORM",
    "RequestedOutput",
    "V2Request",
    "V2Response",
    "datatype_of",
    "encode_infer_request",
    "encode_infer_response",
    "error_body",
    "model_metadata",
    "parse_infer_request",
    "parse_infer_response",
    "parse_model_metadata",
]

MAX_REQUEST_ID_LENGTH = 128

PLATFORM = "onnxruntime_onnx"
"""The ``platform`` every edgemesh model reports (Triton's name for ONNX Runtime)."""

_REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """One entry of a request's ``outputs``; ``binary`` is None when it does not say."""

    name: str
    binary: bool | None


@dataclass(frozen=True, slots=True)
class V2Request:
    """A parsed infer request."""

    id: str | None
    inputs: dict[str, np.ndarray[Any, Any]]
    # None: the client wants every output the model has.
    outputs: tuple[RequestedOutput, ...] | None
    # parameters.binary_data_output: outputs not named otherwise go binary.
    binary_output: bool
    # parameters.deadline_ms, edgemesh's extension: how long the client waits.
    deadline_ms: float | None
    parameters: dict[str, Any]

    def binary_outputs(self, available: Collection[str]) -> set[str]:
        """Which of the outputs to send (``available`` when all) go in the binary section."""
        if self.outputs is None:
            return set(available) if self.binary_output else set()
        return {
            o.name
            for o in self.outputs
            if (o.binary if o.binary is not None else self.binary_output)
        }


@dataclass(frozen=True, slots=True)
class V2Response:
    """A parsed infer response."""

    model_name: str
    model_version: str | None
    id: str | None
    outputs: dict[str, np.ndarray[Any, Any]]
    parameters: dict[str, Any]


# --- requests (server side) ----------------------------------------------------


def parse_infer_request(body: bytes, header_length: int | None) -> V2Request:
    """Parse an infer request body; BadRequest or InvalidInput says what is wrong.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: the
    JSON is the first that many bytes and the rest is binary tensor data.
    Without it the whole body is JSON.
    """
    obj, binary = split_body(body, header_length)
    unknown = set(obj) - _REQUEST_KEYS
    if unknown:
        raise BadRequest(
            f"unknown keys {sorted(unknown)} in the request; expected {sorted(_REQUEST_KEYS)}"
        )
    request_id = _request_id(obj.get("id"))
    parameters = _parameters(obj.get("parameters"), "the request's parameters")
    inputs = obj.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(f"'inputs' must be a non-empty list of tensors, got {json_kind(inputs)}")
    entries = [check_entry(item, "input", i, len(body)) for i, item in enumerate(inputs)]
    no_duplicates([e.name for e in entries], "input")
    return V2Request(
        id=request_id,
        inputs=decode_entries(entries, binary),
        outputs=_requested_outputs(obj.get("outputs")),
        binary_output=_flag(parameters, "binary_data_output", "the request's parameters"),
        deadline_ms=_deadline(parameters.get("deadline_ms")),
        parameters=parameters,
    )


def _request_id(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_REQUEST_ID_LENGTH:
        raise BadRequest(
            f"'id' must be a string of at most {MAX_REQUEST_ID_LENGTH} characters, got {value!r}"
        )
    return value


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object, got {json_kind(value)}")
    return value


def _flag(parameters: Mapping[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _deadline(value: object) -> float | None:
    if value is None:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise BadRequest(f"parameters.deadline_ms must be a positive number, got {value!r}")
    return float(value)


def _requested_outputs(value: object) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest(f"'outputs' must be a list, got {json_kind(value)}")
    requested = tuple(_requested_output(item, i) for i, item in enumerate(value))
    no_duplicates([o.name for o in requested], "output")
    return requested


def _requested_output(item: object, index: int) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise BadRequest(f"outputs[{index}] must be an object with a non-empty string 'name'")
    where = f"output '{item['name']}'"
    parameters = _parameters(item.get("parameters"), f"{where}: parameters")
    if "classification" in parameters:
        raise BadRequest(f"{where}: the classification extension is not supported")
    if "shared_memory_region" in parameters:
        raise BadRequest(f"{where}: the shared memory extension is not supported")
    binary = parameters.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise BadRequest(f"{where}: binary_data must be true or false, got {binary!r}")
    return RequestedOutput(item["name"], binary)


# --- responses (server side) ------------------------------------------------------


def encode_infer_response(
    *,
    model: str,
    version: str | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    binary: Collection[str],
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an infer response; the outputs named in ``binary`` go in the binary section.

    Returns the body and the JSON header's length, or None when nothing is
    binary (the body is then plain JSON).
    """
    header: dict[str, Any] = {"model_name": model}
    if version is not None:
        header["model_version"] = version
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = dict(parameters)
    header["outputs"], chunks = encode_tensors(outputs, binary)
    return assemble(header, chunks, any_binary=bool(chunks))


# --- requests and responses (client side) -------------------------------------------


def encode_infer_request(
    inputs: Mapping[str, np.ndarray[Any, Any]],
    *,
    request_id: str | None = None,
    outputs: Sequence[str] | None = None,
    binary: bool = True,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an infer request for a V2 server.

    ``binary=True`` puts the input data in the binary section and asks for
    binary outputs; False sends and asks for JSON. ``outputs`` names the
    outputs wanted (None: all). Returns the body and the JSON header's length
    (None for a pure JSON body).
    """
    header: dict[str, Any] = {}
    if request_id is not None:
        header["id"] = request_id
    params = dict(parameters or {})
    params["binary_data_output"] = binary
    header["parameters"] = params
    header["inputs"], chunks = encode_tensors(inputs, inputs.keys() if binary else ())
    if outputs is not None:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": binary}} for n in outputs]
    return assemble(header, chunks, any_binary=binary)


def parse_infer_response(body: bytes, header_length: int | None) -> V2Response:
    """Parse a V2 server's infer response; ProtocolError if it is not one."""
    try:
        return _parse_response(body, header_length)
    except MeshError as exc:
        raise ProtocolError(f"malformed infer response: {exc.message}") from exc


def _parse_response(body: bytes, header_length: int | None) -> V2Response:
    obj, binary = split_body(body, header_length)
    model_name = obj.get("model_name")
    if not isinstance(model_name, str):
        raise ProtocolError("'model_name' must be a string")
    version = _optional_str(obj, "model_version")
    response_id = _optional_str(obj, "id")
    parameters = _parameters(obj.get("parameters"), "the response's parameters")
    outputs = obj.get("outputs")
    if not isinstance(outputs, list):
        raise ProtocolError(f"'outputs' must be a list, got {json_kind(outputs)}")
    entries = [check_entry(item, "output", i, len(body)) for i, item in enumerate(outputs)]
    no_duplicates([e.name for e in entries], "output")
    return V2Response(
        model_name=model_name,
        model_version=version,
        id=response_id,
        outputs=decode_entries(entries, binary),
        parameters=parameters,
    )


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"'{key}' must be a string, got {value!r}")
    return value


# --- metadata ---------------------------------------------------------------------


def model_metadata(spec: ModelSpec) -> dict[str, Any]:
    """The V2 model metadata object of ``spec``; dynamic dimensions are -1."""
    return {
        "name": spec.name,
        "versions": [spec.version],
        "platform": PLATFORM,
        "inputs": [_tensor_metadata(t) for t in spec.inputs],
        "outputs": [_tensor_metadata(t) for t in spec.outputs],
    }


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "datatype": datatype_of(spec.dtype),
        "shape": [-1 if d is None else d for d in spec.shape],
    }


def parse_model_metadata(obj: object) -> dict[str, Any]:
    """Check a model metadata object from a remote V2 server; ProtocolError if malformed.

    Datatypes are only checked to be strings: a remote server may serve
    models with types edgemesh cannot carry (``BYTES``), which is the
    caller's to judge. Returns ``obj`` itself.
    """
    if not isinstance(obj, dict):
        raise ProtocolError(f"model metadata must be a JSON object, got {json_kind(obj)}")
    if not isinstance(obj.get("name"), str):
        raise ProtocolError("model metadata: 'name' must be a string")
    versions = obj.get("versions", [])
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise ProtocolError(
            f"model metadata: 'versions' must be a list of strings, got {versions!r}"
        )
    if not isinstance(obj.get("platform"), str):
        raise ProtocolError("model metadata: 'platform' must be a string")
    for key in ("inputs", "outputs"):
        tensors = obj.get(key)
        if not isinstance(tensors, list):
            raise ProtocolError(f"model metadata: '{key}' must be a list, got {json_kind(tensors)}")
        for i, tensor in enumerate(tensors):
            _check_tensor_metadata(tensor, f"model metadata: {key}[{i}]")
    return obj


def _check_tensor_metadata(tensor: object, where: str) -> None:
    if not isinstance(tensor, dict):
        raise ProtocolError(f"{where} must be an object, got {json_kind(tensor)}")
    if not isinstance(tensor.get("name"), str) or not isinstance(tensor.get("datatype"), str):
        raise ProtocolError(f"{where}: 'name' and 'datatype' must be strings")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(is_int(d) and d >= -1 for d in shape):
        raise ProtocolError(f"{where}: 'shape' must be a list of integers >= -1, got {shape!r}")


# --- errors and helpers -------------------------------------------------------------


def error_body(message: str, code: str | None = None) -> bytes:
    """The V2 error body ``{"error": message}``, with ``"code"`` (a MeshError code) if given."""
    obj = {"error": message} if code is None else {"error": message, "code": code}
    return JSON_ENCODER.encode(obj).encode("ascii")
