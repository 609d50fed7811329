"""``edgemesh models reload``: a node rescans its model directories when told, says what changed.

A real node in this event loop with polling off (so only the command can
make it look), and the command as a user runs it, in a subprocess.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mesh.config import RuntimeConfig
from tests.helpers import MODELS_DIR
from tests.helpers.cli import run_edgemesh
from tests.helpers.nodes import node_config, running_node

pytestmark = pytest.mark.timeout(60)


async def test_reload_serves_a_new_file_reports_a_broken_one_and_says_when_nothing_changed(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODELS_DIR / "digits-small.onnx", models / "digits-small.onnx")
    runtime = RuntimeConfig(model_dirs=(models,), reload_interval_s=0.0)
    async with running_node(node_config(name="looker", runtime=runtime)) as node:
        address = f"127.0.0.1:{node.port}"
        status, out, err = await run_edgemesh("models", "reload", "--node", address, timeout_s=30)
        assert (status, out.strip()) == (0, f"{address}: no change in its model directories"), err

        shutil.copy(MODELS_DIR / "digits-large.onnx", models / "big.onnx")
        status, out, err = await run_edgemesh("models", "reload", "--node", address, timeout_s=30)
        assert status == 0, err
        assert f"{address} serves big version 1 (" in out
        assert "big" in node.runtime
        # edgemesh status's text view shows the store and transfer figures too.
        status, out, err = await run_edgemesh("status", "--node", address, timeout_s=30)
        assert status == 0, err
        rows = dict(line.split(None, 1) for line in out.splitlines() if line.count(" ") > 1)
        assert rows["models.versions"].strip() == "big 1; digits-small 1"
        assert rows["models.reloads"].strip() == "2"
        assert rows["transfer.pulled"].strip() == "0"
        assert rows["transfer.pulling"].strip() == "none"

        (models / "broken.onnx").write_bytes(b"not an onnx model")
        (models / "big.onnx").unlink()
        status, out, err = await run_edgemesh("models", "reload", "--node", address, timeout_s=30)
        assert status == 1, (out, err)
        assert f"{address} retires big version 1 (" in out
        assert f"{address} cannot serve {models / 'broken.onnx'}: " in out
        assert "digits-small" in node.runtime
