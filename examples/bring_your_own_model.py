"""Serve your own ONNX model on edgemesh: drop it in a models directory, start a node, call it.

Needs the ``onnx`` package to build the model, which the node does not
(``pip install -e '.[examples]'`` from a checkout, or ``pip install 'edgemesh[examples]'``)::

    python examples/bring_your_own_model.py /tmp/my-models/

1. builds a small ONNX model, ``affine`` (Y = X @ W + b, X float32 [N, 4]),
   and writes it to ``/tmp/my-models/affine.onnx`` (by default
   ``edgemesh-my-models/`` in the temp directory, so nothing lands in the checkout);
2. starts ``edgemesh node --models my-models/`` on 127.0.0.1 (a free port,
   no mDNS, a fresh mesh key), exactly as you would by hand;
3. calls the model with the SDK and checks the answer against numpy;
4. stops the node.

A ``.onnx`` file with no ``manifest.toml`` entry is served under its file
name, and the node reads its inputs and outputs from the model itself.

Your own model instead of the one built here (run once, on any machine that
has the framework; the node only needs the ``.onnx`` file)::

    # PyTorch
    torch.onnx.export(net, torch.zeros(1, 4), "my-models/affine.onnx",
                      input_names=["X"], output_names=["Y"],
                      dynamic_axes={"X": {0: "N"}, "Y": {0: "N"}})

    # scikit-learn (pip install skl2onnx); its input is named "X"
    from skl2onnx import to_onnx
    Path("my-models/my-classifier.onnx").write_bytes(
        to_onnx(clf, X_train[:1].astype(np.float32)).SerializeToString())
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mesh import MeshClient

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:
    sys.exit(
        "bring_your_own_model.py needs the onnx package to build its model: "
        "pip install -e '.[examples]' (or pip install 'edgemesh[examples]')"
    )

MODEL = "affine"
READY_TIMEOUT_S = 60.0


def build_model(path: Path, weights: np.ndarray, bias: np.ndarray) -> None:
    """An ONNX graph computing Y = X @ W + b, with any number of rows N."""
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "b"], ["Y"]),
        ],
        name=MODEL,
        inputs=[helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", weights.shape[0]])],
        outputs=[helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    # Opset 13 and IR version 8 load on onnxruntime 1.10 and newer (older devices too).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def start_node(models_dir: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``edgemesh node`` serving ``models_dir``; returns it, its port and its log."""
    key_file, ready, log = workdir / "mesh.key", workdir / "ready.json", workdir / "node.log"
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    command = [
        *(sys.executable, "-m", "mesh", "node", "--name", "byom"),
        *("--host", "127.0.0.1", "--port", "0", "--no-mdns"),
        *("--models", str(models_dir), "--mesh-key-file", str(key_file)),
        *("--ready-file", str(ready), "--log-level", "warning"),
    ]
    print("   $ edgemesh", " ".join(command[3:]).replace(str(workdir), "WORKDIR"))
    with log.open("wb") as out:
        node = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists() or not ready.read_text().strip():
        if node.poll() is not None or time.monotonic() > deadline:
            stop_node(node)
            sys.exit(f"the node did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return node, int(json.loads(ready.read_text())["rpc_port"]), key_file


def stop_node(node: subprocess.Popen[bytes]) -> None:
    node.terminate()
    try:
        node.wait(10)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait(5)


async def call(port: int, key: bytes, rows: np.ndarray) -> tuple[np.ndarray, str]:
    async with MeshClient(f"127.0.0.1:{port}", mesh_key=key) as client:
        info = next(m for m in await client.models() if m.name == MODEL)
        signature = " -> ".join(
            ", ".join(f"{t.name} {t.dtype} {list(t.shape)}" for t in tensors)
            for tensors in (info.inputs, info.outputs)
        )
        print(f"   the node serves {MODEL!r} (sha256 {info.sha256[:12]}...): {signature}")
        out = await client.infer(MODEL, {"X": rows})
    return out["Y"], out.ran_on


def main(models_dir: Path) -> None:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    models_dir.mkdir(parents=True, exist_ok=True)
    model_path = models_dir / f"{MODEL}.onnx"

    print(f"1. building {model_path} (Y = X @ W + b)")
    build_model(model_path, weights, bias)

    with tempfile.TemporaryDirectory(prefix="edgemesh-byom-") as tmp:
        print(f"2. starting a node that serves {models_dir}")
        node, port, key_file = start_node(models_dir, Path(tmp))
        try:
            print(f"   listening on 127.0.0.1:{port}")
            rows = rng.standard_normal((5, 4)).astype(np.float32)
            print(f"3. calling {MODEL!r} with {rows.shape[0]} rows through the SDK")
            answer, ran_on = asyncio.run(call(port, key_file.read_bytes(), rows))
        finally:
            print("4. stopping the node")
            stop_node(node)

    expected = rows @ weights + bias
    error = float(np.max(np.abs(answer - expected)))
    if not np.allclose(answer, expected, rtol=1e-5, atol=1e-5):
        sys.exit(f"FAILED: the node's answer differs from numpy's by up to {error:.3g}")
    print(f"OK: {MODEL!r} ran on node {ran_on!r} and matches numpy (max abs error {error:.1e})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models_dir",
        nargs="?",
        type=Path,
        default=Path(tempfile.gettempdir()) / "edgemesh-my-models",
        help="directory to write the model into and serve "
        "(default: edgemesh-my-models in the temp directory)",
    )
    main(parser.parse_args().models_dir)
