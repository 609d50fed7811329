"""The Open Inference Protocol endpoint, against a real server on 127.0.0.1.

Two services sit behind it: one wrapping a real Runtime on the bundled
digits model (the real-model paths), and an echo service that answers each
input as an output of the same name. The echo service tests the protocol
layer only: every datatype, every error mapping, with no model in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from multidict import CIMultiDictProxy

from mesh.config import HttpConfig, RuntimeConfig
from mesh.core.wire import oip
from mesh.core.wire.catalog import IndexEntry
from mesh.core.wire.requests import InferRequest
from mesh.errors import (
    DeadlineExceeded,
    InferenceFailed,
    MeshError,
    ModelNotFound,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
)
from mesh.http.server import HEADER_LENGTH, HttpServer
from mesh.runtime.runtime import Runtime
from mesh.service import Answer
from tests.helpers import MODELS_DIR

Array = np.ndarray[Any, Any]
DIGITS = "digits-small"


class RuntimeService:
    """An InferenceService running the bundled models directly."""

    server_name = "edgemesh"
    server_version = "9.9.9"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def ready(self) -> bool:
        return True

    async def model_metadata(self, name: str) -> dict[str, Any]:
        return oip.model_metadata(self.runtime.spec(name))

    async def infer(self, request: InferRequest) -> Answer:
        return Answer(await self.runtime.infer(request.model, request.inputs), "test-node")

    async def repository_index(self) -> list[IndexEntry]:
        return [IndexEntry(spec.name, spec.version) for spec in self.runtime.specs()]


class EchoService:
    """Answers each input as the output of the same name; can be told to fail."""

    server_name = "echo"
    server_version = "0"

    def __init__(self) -> None:
        self.is_ready = True
        self.fail: BaseException | None = None
        self.block = False
        self.cancelled = asyncio.Event()
        self.requests: list[InferRequest] = []

    def ready(self) -> bool:
        return self.is_ready

    async def model_metadata(self, name: str) -> dict[str, Any]:
        if name != "echo":
            raise_not_found(name)
        if self.fail is not None:
            raise self.fail
        return {"name": "echo", "versions": ["1"], "platform": "echo", "inputs": [], "outputs": []}

    async def infer(self, request: InferRequest) -> Answer:
        self.requests.append(request)
        if request.model != "echo":
            raise_not_found(request.model)
        if self.fail is not None:
            raise self.fail
        if self.block:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return Answer(dict(request.inputs), "echo-node")


def raise_not_found(name: str) -> None:
    raise ModelNotFound(f"model '{name}' is not served here")


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    config = RuntimeConfig(
        model_dirs=(MODELS_DIR,),
        model_names=(DIGITS,),
        per_model_concurrency=2,
        executor_threads=2,
    )
    with Runtime(config) as rt:
        yield rt


@contextlib.asynccontextmanager
async def serving(service: Any, max_body_bytes: int = 1 << 20) -> AsyncIterator[str]:
    """Serve ``service`` on a free port; yields the base URL."""
    server = HttpServer(
        service, host="127.0.0.1", config=HttpConfig(port=0, max_body_bytes=max_body_bytes)
    )
    listening = asyncio.Event()
    task = asyncio.create_task(server.serve(listening))
    await asyncio.wait_for(listening.wait(), 10)
    try:
        yield f"http://127.0.0.1:{server.bound_port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert server.bound_port is None


@pytest.fixture
def echo() -> EchoService:
    return EchoService()


@pytest.fixture
async def echo_url(echo: EchoService) -> AsyncIterator[str]:
    async with serving(echo) as url:
        yield url


@pytest.fixture
async def digits_url(runtime: Runtime) -> AsyncIterator[str]:
    async with serving(RuntimeService(runtime)) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with http.request(
        method, url, data=body, headers=headers, skip_auto_headers=["Content-Type"]
    ) as response:
        return response.status, response.headers, await response.read()


async def infer(
    http: aiohttp.ClientSession,
    url: str,
    inputs: dict[str, Array],
    *,
    binary: bool,
    outputs: list[str] | None = None,
    model: str = "echo",
) -> oip.V2Response:
    body, length = oip.encode_infer_request(inputs, outputs=outputs, binary=binary)
    headers = {} if length is None else {HEADER_LENGTH: str(length)}
    status, got, payload = await call(http, "POST", f"{url}/v2/models/{model}/infer", body, headers)
    assert status == 200, payload
    length_header = got.get(HEADER_LENGTH)
    return oip.parse_infer_response(payload, None if length_header is None else int(length_header))


async def error_of(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    status, got, payload = await call(http, method, url, body, headers)
    assert got["Content-Type"].startswith("application/json")
    return status, json.loads(payload)


# --- health and metadata ------------------------------------------------------------------


async def test_health_and_server_metadata(http: aiohttp.ClientSession, echo_url: str) -> None:
    status, _, payload = await call(http, "GET", f"{echo_url}/v2/health/live")
    assert (status, json.loads(payload)) == (200, {"live": True})
    status, _, payload = await call(http, "GET", f"{echo_url}/v2/health/ready")
    assert (status, json.loads(payload)) == (200, {"ready": True})
    status, _, payload = await call(http, "GET", f"{echo_url}/v2")
    assert status == 200
    assert json.loads(payload) == {
        "name": "echo",
        "version": "0",
        "extensions": ["binary_tensor_data"],
    }


async def test_not_ready_is_503(
    http: aiohttp.ClientSession, echo: EchoService, echo_url: str
) -> None:
    echo.is_ready = False
    status, body = await error_of(http, "GET", f"{echo_url}/v2/health/ready")
    assert status == 503 and "not ready" in body["error"]
    status, body = await error_of(http, "GET", f"{echo_url}/v2/models/echo/ready")
    assert status == 503
    status, _, _ = await call(http, "GET", f"{echo_url}/v2/health/live")
    assert status == 200


async def test_model_metadata_and_versions(http: aiohttp.ClientSession, digits_url: str) -> None:
    status, _, payload = await call(http, "GET", f"{digits_url}/v2/models/{DIGITS}")
    assert status == 200
    metadata = json.loads(payload)
    assert metadata["name"] == DIGITS
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"] for o in metadata["outputs"]} == {"label", "probabilities"}
    version = metadata["versions"][0]
    versioned = f"{digits_url}/v2/models/{DIGITS}/versions/{version}"
    status, _, payload = await call(http, "GET", versioned)
    assert (status, json.loads(payload)) == (200, metadata)
    status, _, payload = await call(http, "GET", versioned + "/ready")
    assert status == 200

    status, body = await error_of(http, "GET", f"{digits_url}/v2/models/{DIGITS}/versions/77")
    assert status == 404
    assert body["code"] == "ModelNotFound"
    assert f"has no version '77'; versions: '{version}'" in body["error"]
    status, _ = await error_of(http, "GET", f"{digits_url}/v2/models/{DIGITS}/versions/77/ready")
    assert status == 404


async def test_unknown_model_is_404(http: aiohttp.ClientSession, digits_url: str) -> None:
    for path in ("", "/ready"):
        status, body = await error_of(http, "GET", f"{digits_url}/v2/models/nope{path}")
        assert status == 404
        assert body["code"] == "ModelNotFound" and "'nope'" in body["error"]
    x = np.zeros((1, 64), np.float32)
    payload, _ = oip.encode_infer_request({"X": x}, binary=False)
    status, body = await error_of(http, "POST", f"{digits_url}/v2/models/nope/infer", payload)
    assert status == 404 and body["code"] == "ModelNotFound"


# --- inference on the real model ----------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_infer_digits_matches_the_runtime(
    http: aiohttp.ClientSession,
    digits_url: str,
    runtime: Runtime,
    digits: tuple[Array, Array],
    binary: bool,
) -> None:
    x = digits[0][:5].astype(np.float32)
    want = await runtime.infer(DIGITS, {"X": x})
    got = await infer(http, digits_url, {"X": x}, binary=binary, model=DIGITS)
    assert got.model_name == DIGITS
    assert got.parameters == {"ran_on": "test-node"}
    assert set(got.outputs) == set(want)
    for name, array in want.items():
        np.testing.assert_array_equal(got.outputs[name], array)
        assert got.outputs[name].dtype == array.dtype


async def test_infer_selects_outputs_in_request_order(
    http: aiohttp.ClientSession, digits_url: str
) -> None:
    x = np.zeros((2, 64), np.float32)
    request = {
        "id": "req-7",
        "inputs": [{"name": "X", "shape": [2, 64], "datatype": "FP32", "data": x.tolist()}],
        "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": True}},
            {"name": "label"},
        ],
    }
    url = f"{digits_url}/v2/models/{DIGITS}/infer"
    status, headers, payload = await call(http, "POST", url, json.dumps(request).encode())
    assert status == 200
    assert headers["Content-Type"] == "application/octet-stream"
    length = int(headers[HEADER_LENGTH])
    header = json.loads(payload[:length])
    assert header["id"] == "req-7"
    assert [o["name"] for o in header["outputs"]] == ["probabilities", "label"]
    assert header["outputs"][1]["data"] == header["outputs"][1]["data"]  # JSON, not binary
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 2 * 10 * 4}
    parsed = oip.parse_infer_response(payload, length)
    assert parsed.outputs["probabilities"].shape == (2, 10)


async def test_infer_versioned_route(http: aiohttp.ClientSession, digits_url: str) -> None:
    _, _, payload = await call(http, "GET", f"{digits_url}/v2/models/{DIGITS}")
    version = json.loads(payload)["versions"][0]
    x = np.zeros((1, 64), np.float32)
    body, _ = oip.encode_infer_request({"X": x}, binary=False)
    url = f"{digits_url}/v2/models/{DIGITS}/versions/{version}/infer"
    status, _, payload = await call(http, "POST", url, body)
    assert status == 200
    assert json.loads(payload)["model_version"] == version
    url = f"{digits_url}/v2/models/{DIGITS}/versions/0.0.bogus/infer"
    status, error = await error_of(http, "POST", url, body)
    assert status == 404 and "has no version" in error["error"]


async def test_unknown_output_is_400(http: aiohttp.ClientSession, digits_url: str) -> None:
    x = np.zeros((1, 64), np.float32)
    body, _ = oip.encode_infer_request({"X": x}, binary=False, outputs=["label", "logits"])
    status, error = await error_of(http, "POST", f"{digits_url}/v2/models/{DIGITS}/infer", body)
    assert status == 400
    assert "unknown output(s) 'logits'; available: " in error["error"]
    assert "'probabilities'" in error["error"]


async def test_input_that_does_not_fit_the_model_is_400(
    http: aiohttp.ClientSession, digits_url: str
) -> None:
    body, _ = oip.encode_infer_request({"X": np.zeros((1, 63), np.float32)}, binary=False)
    status, error = await error_of(http, "POST", f"{digits_url}/v2/models/{DIGITS}/infer", body)
    assert (status, error["code"]) == (400, "InvalidInput")


# --- every datatype through the protocol layer -------------------------------------------


def tensor_of(datatype: str) -> Array:
    dtype = oip.DATATYPES[datatype]
    if dtype.kind == "b":
        return np.array([[True, False], [False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, info.max], [0, 3]], dtype=dtype)
    return np.array([[-1.5, 0.25], [np.finfo(dtype).max, np.nan]], dtype=dtype)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(oip.DATATYPES))
async def test_every_datatype_round_trips(
    http: aiohttp.ClientSession, echo_url: str, datatype: str, binary: bool
) -> None:
    tensor = tensor_of(datatype)
    got = await infer(http, echo_url, {"T": tensor}, binary=binary)
    np.testing.assert_array_equal(got.outputs["T"], tensor)
    assert got.outputs["T"].dtype == tensor.dtype


async def test_request_id_and_deadline_reach_the_service(
    http: aiohttp.ClientSession, echo: EchoService, echo_url: str
) -> None:
    body, _ = oip.encode_infer_request(
        {"T": np.ones(1)}, request_id="abc", binary=False, parameters={"deadline_ms": 1500}
    )
    status, _, payload = await call(http, "POST", f"{echo_url}/v2/models/echo/infer", body)
    assert status == 200
    assert json.loads(payload)["id"] == "abc"
    (request,) = echo.requests
    assert (request.model, request.request_id, request.deadline_ms) == ("echo", "abc", 1500.0)


async def test_missing_content_type_is_fine(http: aiohttp.ClientSession, echo_url: str) -> None:
    body, length = oip.encode_infer_request({"T": np.arange(3)}, binary=True)
    async with http.post(
        f"{echo_url}/v2/models/echo/infer",
        data=body,
        headers={HEADER_LENGTH: str(length)},
        skip_auto_headers=["Content-Type"],
    ) as response:
        assert response.request_info.headers.get("Content-Type") is None
        assert response.status == 200


# --- refusals ---------------------------------------------------------------------------

X = {"name": "T", "shape": [2], "datatype": "FP32"}
BINARY_X = json.dumps({"inputs": [{**X, "parameters": {"binary_data_size": 8}}]}).encode()
REFUSALS: list[tuple[str, bytes, dict[str, str], int, str, str]] = [
    ("bad json", b"{", {}, 400, "BadRequest", "not valid JSON"),
    (
        "wrong datatype",
        json.dumps({"inputs": [{**X, "datatype": "FLOAT32", "data": [1, 2]}]}).encode(),
        {},
        400,
        "InvalidInput",
        "unknown datatype 'FLOAT32'; supported datatypes: BOOL",
    ),
    (
        "shape mismatch",
        json.dumps({"inputs": [{**X, "data": [1.0, 2.0, 3.0]}]}).encode(),
        {},
        400,
        "InvalidInput",
        "shape [2] holds 2 elements but data has 3",
    ),
    (
        "lying header length",
        BINARY_X + bytes(8),
        {HEADER_LENGTH: str(len(BINARY_X) + 100)},
        400,
        "BadRequest",
        f"the body has {len(BINARY_X) + 8} bytes",
    ),
    (
        "header length not a number",
        BINARY_X + bytes(8),
        {HEADER_LENGTH: "twelve"},
        400,
        "BadRequest",
        "must be a non-negative integer, got 'twelve'",
    ),
    (
        "binary size mismatch",
        BINARY_X + bytes(6),
        {HEADER_LENGTH: str(len(BINARY_X))},
        400,
        "BadRequest",
        "add up to 8 bytes but the binary section after the JSON header holds 6 bytes",
    ),
    (
        "binary without header length",
        BINARY_X + b"\xff" * 8,
        {},
        400,
        "BadRequest",
        "needs the Inference-Header-Content-Length header",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "words"),
    [case[1:] for case in REFUSALS],
    ids=[case[0] for case in REFUSALS],
)
async def test_bad_requests_are_refused(
    http: aiohttp.ClientSession,
    echo_url: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    code: str,
    words: str,
) -> None:
    got_status, error = await error_of(
        http, "POST", f"{echo_url}/v2/models/echo/infer", body, headers
    )
    assert (got_status, error["code"]) == (status, code)
    assert words in error["error"]


async def test_body_over_the_limit_is_413(http: aiohttp.ClientSession, echo: EchoService) -> None:
    async with serving(echo, max_body_bytes=1000) as url:
        status, error = await error_of(http, "POST", f"{url}/v2/models/echo/infer", bytes(5000))
        assert status == 413
        assert error["error"] == "request body of 5000 bytes is over the limit of 1000 bytes"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield bytes(400)

        async with http.post(f"{url}/v2/models/echo/infer", data=chunked()) as response:
            assert response.status == 413
            assert "over the limit of 1000 bytes" in (await response.json())["error"]
        # Right at the limit is still read (and then refused for what it is).
        status, error = await error_of(http, "POST", f"{url}/v2/models/echo/infer", bytes(1000))
        assert (status, error["code"]) == (400, "BadRequest")


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (Overloaded("mesh saturated and no gateway"), 503),
        (PeerUnavailable("gateway unreachable"), 503),
        (DeadlineExceeded("deadline of 10 ms passed"), 503),
        (InferenceFailed("onnxruntime said no"), 500),
        (ProtocolError("the upstream answered garbage"), 502),
        (RemoteError("the upstream failed"), 502),
        (MeshError("something else"), 500),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
async def test_service_errors_map_to_statuses(
    http: aiohttp.ClientSession,
    echo: EchoService,
    echo_url: str,
    failure: MeshError,
    status: int,
) -> None:
    echo.fail = failure
    body, _ = oip.encode_infer_request({"T": np.ones(1)}, binary=False)
    got, error = await error_of(http, "POST", f"{echo_url}/v2/models/echo/infer", body)
    assert (got, error) == (status, {"error": failure.message, "code": failure.code})


async def test_a_bug_is_500_without_details_and_logged(
    http: aiohttp.ClientSession,
    echo: EchoService,
    echo_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo.fail = RuntimeError("secret detail")
    body, _ = oip.encode_infer_request({"T": np.ones(1)}, binary=False)
    with caplog.at_level(logging.ERROR, logger="mesh.http.server"):
        status, error = await error_of(http, "POST", f"{echo_url}/v2/models/echo/infer", body)
    assert status == 500
    assert error == {"error": "internal error", "code": "InternalError"}
    (record,) = [r for r in caplog.records if r.name == "mesh.http.server"]
    assert record.exc_info is not None and "secret detail" in str(record.exc_info[1])


async def test_unknown_route_and_wrong_method(http: aiohttp.ClientSession, echo_url: str) -> None:
    status, error = await error_of(http, "GET", f"{echo_url}/v1/models")
    assert status == 404 and "no route for GET /v1/models" in error["error"]
    status, headers, payload = await call(http, "GET", f"{echo_url}/v2/models/echo/infer")
    assert status == 405
    assert headers["Allow"] == "POST"
    assert json.loads(payload)["error"] == (
        "method GET is not allowed on /v2/models/echo/infer; allowed: POST"
    )
    status, _ = await error_of(http, "DELETE", f"{echo_url}/v2/health/live")
    assert status == 405


async def test_client_gone_cancels_the_inference(echo: EchoService, echo_url: str) -> None:
    echo.block = True
    body, _ = oip.encode_infer_request({"T": np.ones(1)}, binary=False)
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(f"{echo_url}/v2/models/echo/infer", data=body)
    await asyncio.wait_for(echo.cancelled.wait(), 10)


async def test_serve_releases_the_port(echo: EchoService) -> None:
    async with serving(echo) as url:
        pass
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"{url}/v2/health/live")


# --- Triton's own client ------------------------------------------------------------------


def triton_session(port: int, x: Array, runtime_outputs: dict[str, Array]) -> None:
    """Drive the server with tritonclient.http (synchronous; runs in a worker thread)."""
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
        metadata = client.get_model_metadata(DIGITS)
        assert metadata["inputs"][0]["shape"] == [-1, 64]
        assert client.is_model_ready(DIGITS)
        assert not client.is_model_ready("nope")
        for binary_in in (False, True):
            for binary_out in (False, True):
                tensor = triton.InferInput("X", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary_in)
                wanted = [
                    triton.InferRequestedOutput(name, binary_data=binary_out)
                    for name in runtime_outputs
                ]
                result = client.infer(DIGITS, [tensor], outputs=wanted, request_id="t1")
                for name, array in runtime_outputs.items():
                    np.testing.assert_array_equal(result.as_numpy(name), array)
                assert result.get_response()["id"] == "t1"
        # No outputs named: the client asks for all of them, binary.
        result = client.infer(DIGITS, [tensor])
        np.testing.assert_array_equal(result.as_numpy("label"), runtime_outputs["label"])
    finally:
        client.close()


async def test_tritonclient_works_against_the_server(
    runtime: Runtime, digits: tuple[Array, Array]
) -> None:
    pytest.importorskip("tritonclient.http")
    x = digits[0][:4].astype(np.float32)
    want = await runtime.infer(DIGITS, {"X": x})
    server = HttpServer(RuntimeService(runtime), host="127.0.0.1", config=HttpConfig(port=0))
    listening = asyncio.Event()
    task = asyncio.create_task(server.serve(listening))
    try:
        await asyncio.wait_for(listening.wait(), 10)
        assert server.bound_port is not None
        await asyncio.to_thread(triton_session, server.bound_port, x, want)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
