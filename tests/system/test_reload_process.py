"""``edgemesh node`` reloads its models on SIGHUP, as a real process, and keeps running."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from mesh import Client
from mesh.demo.processes import start_node_process, stop_process
from tests.helpers.tiny_models import INPUT, OUTPUT, write_constant_model

pytestmark = pytest.mark.system

X = {INPUT: np.ones((1, 2), dtype=np.float32)}


def wait_for(client: Client, version: str, timeout_s: float = 15.0) -> list[str]:
    """The versions of ``m`` the node serves, once ``version`` is among them."""
    deadline = time.monotonic() + timeout_s
    while True:
        versions = [m.version for m in client.models() if m.name == "m"]
        if version in versions or time.monotonic() > deadline:
            return versions
        time.sleep(0.05)


def test_sighup_serves_a_new_version_and_the_node_runs_on(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_constant_model(models / "m" / "1" / "model.onnx", 1.0)
    # No polling: only the signal makes it look.
    process, port = start_node_process(
        tmp_path,
        name="reloading",
        key=None,
        extra=["--models", str(models), "--reload-interval", "0"],
    )
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert float(client.infer("m", X)[OUTPUT][0, 0]) == 1.0
            write_constant_model(models / "m" / "2" / "model.onnx", 2.0)
            time.sleep(0.3)
            assert wait_for(client, "2", timeout_s=0.2) == ["1"]  # not without the signal
            process.send_signal(signal.SIGHUP)
            assert wait_for(client, "2") == ["1", "2"]
            assert float(client.infer("m", X)[OUTPUT][0, 0]) == 2.0
            assert float(client.infer("m", X, version="1")[OUTPUT][0, 0]) == 1.0
    finally:
        # SIGHUP did not end it: SIGTERM still drains it, exit status 0.
        assert stop_process(process) == 0, (tmp_path / "reloading.log").read_text()
