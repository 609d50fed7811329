"""``edgemesh models reload``: a node rescans its model directories when told, says what changed.

A real node in this event loop with polling off (so only the command can
make it look), and the command as a user runs it, in a subprocess.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from mesh.config import RuntimeConfig
from tests.helpers import MODELS_DIR, REPO
from tests.helpers.nodes import node_config, running_node

pytestmark = pytest.mark.timeout(60)


async def edgemesh(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_reload_serves_a_new_file_reports_a_broken_one_and_says_when_nothing_changed(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODELS_DIR / "digits-small.onnx", models / "digits-small.onnx")
    runtime = RuntimeConfig(model_dirs=(models,), reload_interval_s=0.0)
    async with running_node(node_config(name="looker", runtime=runtime)) as node:
        address = f"127.0.0.1:{node.port}"
        status, out, err = await edgemesh("models", "reload", "--node", address)
        assert (status, out.strip()) == (0, f"{address}: no change in its model directories"), err

        shutil.copy(MODELS_DIR / "digits-large.onnx", models / "big.onnx")
        status, out, err = await edgemesh("models", "reload", "--node", address)
        assert status == 0, err
        assert f"{address} serves big version 1 (" in out
        assert "big" in node.runtime

        (models / "broken.onnx").write_bytes(b"not an onnx model")
        (models / "big.onnx").unlink()
        status, out, err = await edgemesh("models", "reload", "--node", address)
        assert status == 1, (out, err)
        assert f"{address} retires big version 1 (" in out
        assert f"{address} cannot serve {models / 'broken.onnx'}: " in out
        assert "digits-small" in node.runtime
