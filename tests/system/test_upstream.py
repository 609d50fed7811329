"""``edgemesh gateway --upstream`` in front of a real, independent V2 server: MLServer.

MLServer (from PyPI) runs digits-large through a small custom runtime
(``mlserver_onnx/runtime.py``) as its own process, bound to 127.0.0.1 only;
our gateway forwards to it. MLServer speaks JSON tensors only, so this also
checks that the client falls back from Triton's binary extension.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mesh.config import GatewayClientConfig
from mesh.demo.processes import stop_process
from mesh.errors import ModelNotFound
from mesh.gateway.client import GatewayClient
from tests.helpers import MODELS_DIR
from tests.helpers.gateway import start_gateway

pytestmark = pytest.mark.system

Digits = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
RUNTIME_DIR = Path(__file__).resolve().parent / "mlserver_onnx"
MLSERVER = Path(sys.executable).parent / "mlserver"
START_TIMEOUT_S = 90.0

try:
    import mlserver  # noqa: F401
except ImportError:
    pytest.skip("mlserver is not installed (pip install mlserver)", allow_module_level=True)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"MLServer exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/v2/models/digits-large/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"MLServer not ready in {START_TIMEOUT_S:.0f} s:\n{log.read_text()}")
        time.sleep(0.2)


@pytest.fixture
def mlserver_url(tmp_path: Path) -> Iterator[str]:
    http_port, grpc_port = free_ports(2)
    repository = tmp_path / "mlserver"
    model_dir = repository / "digits-large"
    model_dir.mkdir(parents=True)
    (repository / "settings.json").write_text(
        json.dumps(
            {
                # Loopback only: tests never listen on the machine's interfaces.
                "host": "127.0.0.1",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "parallel_workers": 0,
                "metrics_endpoint": None,
                "load_models_at_startup": True,
                "debug": False,
            }
        )
    )
    tensor = {"datatype": "FP32", "shape": [-1, 64], "name": "X"}
    (model_dir / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "digits-large",
                "implementation": "runtime.OnnxModel",
                "versions": ["1"],
                "platform": "onnxruntime_onnx",
                "inputs": [tensor],
                "outputs": [
                    {"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                ],
                "parameters": {"uri": str(MODELS_DIR / "digits-large.onnx"), "version": "1"},
            }
        )
    )
    log = tmp_path / "mlserver.log"
    python_path = [str(RUNTIME_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(MLSERVER), "start", str(repository)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ,
            cwd=tmp_path,
        )
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_until_ready(url, process, log)
        yield url
    finally:
        if stop_process(process, timeout=15) not in (0, -15):
            print(log.read_text())  # for the failure report, if there is one


@pytest.fixture
def forwarding_gateway(tmp_path: Path, mlserver_url: str) -> Iterator[str]:
    process, port = start_gateway(tmp_path, "--upstream", mlserver_url, name="front")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        assert stop_process(process) == 0, (tmp_path / "front.log").read_text()


async def test_our_gateway_forwards_to_mlserver(forwarding_gateway: str, digits: Digits) -> None:
    pixels, labels = digits
    session = ort.InferenceSession(
        str(MODELS_DIR / "digits-large.onnx"), providers=["CPUExecutionProvider"]
    )
    want_label, want_probabilities = session.run(["label", "probabilities"], {"X": pixels[:25]})
    async with GatewayClient(GatewayClientConfig(url=forwarding_gateway)) as client:
        assert await client.ready()
        got = await client.infer("digits-large", {"X": pixels[:25]}, deadline_s=20.0)
        np.testing.assert_array_equal(got["label"], want_label)
        np.testing.assert_array_equal(got["probabilities"], want_probabilities)
        assert float(np.mean(got["label"] == labels[:25])) > 0.9

        metadata = await client.model_metadata("digits-large")
        assert metadata["name"] == "digits-large"
        assert metadata["platform"] == "onnxruntime_onnx"
        assert [t["name"] for t in metadata["inputs"]] == ["X"]
        assert metadata["inputs"][0]["shape"] == [-1, 64]

        with pytest.raises(ModelNotFound, match="nope"):
            await client.infer("nope", {"X": pixels[:1]})
        with pytest.raises(ModelNotFound):
            await client.model_metadata("nope")
        assert client.state == "closed"


async def test_client_speaks_json_to_mlserver_directly(mlserver_url: str, digits: Digits) -> None:
    """MLServer has no binary tensor extension: the client must notice and send JSON."""
    pixels, _ = digits
    async with GatewayClient(GatewayClientConfig(url=mlserver_url)) as client:
        got = await client.infer("digits-large", {"X": pixels[:3]})
        assert got["label"].dtype == np.int64
        assert got["probabilities"].shape == (3, 10)
        assert client.state == "closed"
