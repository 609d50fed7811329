"""The wheel carries the bundled models: a node run from it alone serves them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mesh import Client

pytestmark = pytest.mark.system
REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_models_and_a_node_serves_them(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("-w", str(tmp_path / "dist"), str(REPO)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("edgemesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "mesh/py.typed",
        "mesh/_models/manifest.toml",
        "mesh/_models/digits-small.onnx",
        "mesh/_models/digits-large.onnx",
        "mesh/_models/cnn-heavy.onnx",
        "mesh/_models/digits-test.npz",
    ]:
        assert expected in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)

    # Run the node from the unpacked wheel, not from this checkout.
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(site)}
    node = subprocess.Popen(
        [
            *(sys.executable, "-m", "mesh", "node", "--host", "127.0.0.1", "--port", "0"),
            *("--ready-file", str(ready), "--log-level", "warning", "--no-mdns"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert node.poll() is None, node.stderr.read() if node.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = json.loads(ready.read_text())["rpc_port"]
        with Client(f"127.0.0.1:{port}") as client:
            assert {m.name for m in client.models()} == {
                "digits-small",
                "digits-large",
                "cnn-heavy",
            }
            bundled = site / "mesh" / "_models"
            manifest = tomllib.loads((bundled / "manifest.toml").read_text())
            with np.load(bundled / "digits-test.npz") as data:
                out = client.infer("digits-large", {"X": data["X"]})
                accuracy = float(np.mean(out["label"] == data["y"]))
            assert accuracy == pytest.approx(manifest["models"]["digits-large"]["accuracy"])
    finally:
        node.terminate()
        node.wait(timeout=15)
        if node.stderr:
            node.stderr.close()
