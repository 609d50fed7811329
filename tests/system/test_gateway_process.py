"""``edgemesh gateway`` as a real process, spoken to over HTTP as any V2 client would."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from mesh.demo.processes import stop_process
from tests.helpers import MODELS_DIR
from tests.helpers.gateway import start_gateway

pytestmark = pytest.mark.system

Digits = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[int]:
    process, port = start_gateway(
        tmp_path, "--models", str(MODELS_DIR), "--model", "digits-large", "--slots", "2"
    )
    try:
        yield port
    finally:
        assert stop_process(process) == 0, (tmp_path / "gw.log").read_text()


def binary_request(x: np.ndarray[Any, Any]) -> tuple[bytes, dict[str, str]]:
    """A V2 infer body with Triton's binary extension, written out by hand."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": False},
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + np.ascontiguousarray(x, "<f4").tobytes(), headers


async def test_infer_over_http(gateway: int, digits: Digits) -> None:
    pixels, labels = digits
    base = f"http://127.0.0.1:{gateway}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v2/health/ready") as response:
            assert response.status == 200
        async with http.get(f"{base}/v2") as response:
            assert (await response.json())["name"] == "edgemesh"
        body, headers = binary_request(pixels[:20])
        async with http.post(
            f"{base}/v2/models/digits-large/infer", data=body, headers=headers
        ) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert outputs["label"]["data"] == labels[:20].tolist()
        assert answer["parameters"]["ran_on"] == "gw"
        async with http.post(
            f"{base}/v2/models/digits-small/infer", data=body, headers=headers
        ) as response:
            assert response.status == 404
            assert "digits-small" in (await response.json())["error"]


def test_ready_file_says_where_it_listens(tmp_path: Path, gateway: int) -> None:
    # What scripts (and start_gateway_process) read to find the gateway.
    info = json.loads((tmp_path / "gw.ready.json").read_text())
    assert info == {"name": "gw", "host": "127.0.0.1", "http_port": gateway}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_gateway_cleanly(tmp_path: Path, signum: int) -> None:
    process, port = start_gateway(tmp_path, "--model", "digits-small")
    try:
        process.send_signal(signum)
        assert process.wait(timeout=15) == 0
    finally:
        stop_process(process)
    log = (tmp_path / "gw.log").read_text()
    assert "Traceback" not in log
    assert "gateway gw listening" in log
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # the port is free again


def run_gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "http"], "--port must be a port number"),
        (["--upstream", "triton:8000"], "--upstream must be an http:// or https:// URL"),
        (["--queue-cap", "-3"], "--queue-cap must be an integer >= 0"),
        (["--host", "127.0.0.1", "--port", "0", "--model", "no-such-model"], "no-such-model"),
        (["--upstream-timeout", "5"], "need an upstream URL"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(args: Sequence[str], message: str) -> None:
    result = run_gateway_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_gateway_cli(
            "--host", "127.0.0.1", "--port", str(port), "--model", "digits-small"
        )
    # Address in use has its own exit status (README, "Exit statuses").
    assert result.returncode == 3, result.stderr
    assert f"--port {port} is in use on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_gateway_help() -> None:
    result = run_gateway_cli("--help")
    assert result.returncode == 0
    assert "--upstream URL" in result.stdout
    assert "--emulate-service-ms MS" in result.stdout
