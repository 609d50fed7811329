"""``edgemesh node`` as a real process, used the ways a user would: SDK, CLI, a raw socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from mesh import AuthError, Client, InvalidInput
from mesh.demo.processes import start_node_process, stop_process
from tests.helpers import KEY

pytestmark = pytest.mark.system

Digits = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
EDGEMESH = str(Path(sys.executable).parent / "edgemesh")


@pytest.fixture
def keyed_node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A node process with a mesh key; yields its port and the key file."""
    process, port = start_node_process(tmp_path, name="sys-node", key=KEY)
    try:
        yield port, tmp_path / "sys-node.key"
    finally:
        assert stop_process(process) == 0, (tmp_path / "sys-node.log").read_text()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEMESH, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_sync_sdk_classifies_digits(keyed_node: tuple[int, Path], digits: Digits) -> None:
    port, _ = keyed_node
    pixels, labels = digits
    with Client(f"127.0.0.1:{port}", mesh_key=KEY) as client:
        out = client.infer("digits-small", {"X": pixels[:50]})
        assert out["label"].dtype == np.int64
        assert float(np.mean(out["label"] == labels[:50])) > 0.9
        with pytest.raises(InvalidInput, match="float32"):
            client.infer("digits-small", {"X": pixels[:1].astype(np.float64)})
        assert "digits-small" in [m.name for m in client.models()]


def test_wrong_or_missing_key_is_refused(keyed_node: tuple[int, Path]) -> None:
    port, _ = keyed_node
    with pytest.raises(AuthError):
        Client(f"127.0.0.1:{port}", mesh_key=b"not the right key at all")
    with pytest.raises(AuthError):
        Client(f"127.0.0.1:{port}")
    refused = run_cli("models", "--node", f"127.0.0.1:{port}")
    assert refused.returncode == 1
    assert "AuthError" in refused.stderr


def test_cli_infer_models_and_status(
    keyed_node: tuple[int, Path], tmp_path: Path, digits: Digits
) -> None:
    port, key_file = keyed_node
    pixels, labels = digits
    node = ["--node", f"127.0.0.1:{port}", "--mesh-key-file", str(key_file)]
    np.save(tmp_path / "x.npy", pixels[:3])
    infer = run_cli("infer", *node, "--model", "digits-small", "--input", str(tmp_path / "x.npy"))
    assert infer.returncode == 0, infer.stderr
    assert "label: int64 [3]" in infer.stdout
    assert "probabilities: float32 [3, 10]" in infer.stdout
    assert "ran on: " in infer.stdout
    as_json = run_cli(
        "infer", *node, "--model", "digits-small", "--input", f"X={tmp_path / 'x.npy'}", "--json"
    )
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["outputs"]["label"] == labels[:3].tolist()
    assert isinstance(answer["ran_on"], str)

    models = run_cli("models", *node)
    assert models.returncode == 0, models.stderr
    assert "digits-small" in models.stdout and "X float32[-1, 64]" in models.stdout

    # The key may come from the environment instead of a file.
    status = run_cli(
        "status", "--node", f"127.0.0.1:{port}", "--json", env={"EDGEMESH_MESH_KEY": KEY.decode()}
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counters"]["served"] >= 2

    bad = run_cli("infer", *node, "--model", "digits-small", "--input", str(tmp_path / "nope.npy"))
    assert bad.returncode == 1
    assert "cannot read" in bad.stderr


def test_any_msgpack_rpc_client_can_call_infer(
    keyed_node: tuple[int, Path], digits: Digits
) -> None:
    """A blocking socket and the msgpack library: what a client in any language does."""
    import hashlib
    import hmac

    port, _ = keyed_node
    pixels, labels = digits
    unpacker = msgpack.Unpacker(raw=False)

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:

        def call(msgid: int, method: str, params: list[Any]) -> Any:
            sock.sendall(msgpack.packb([0, msgid, method, params], use_bin_type=True))
            while True:
                for message in unpacker:
                    assert message[:2] == [1, msgid]
                    assert message[2] is None, message[2]
                    return message[3]
                unpacker.feed(sock.recv(65536))

        # The handshake, written out from docs/PROTOCOL.md.
        client_nonce = os.urandom(32)
        first = call(1, "hello", [{"nonce": client_nonce}])
        server_nonce = first["nonce"]
        expected = hmac.new(
            KEY, b"edgemesh/hello/server\x00" + client_nonce + server_nonce, hashlib.sha256
        ).digest()
        assert hmac.compare_digest(first["proof"], expected)
        proof = hmac.new(
            KEY, b"edgemesh/hello/client\x00" + server_nonce + client_nonce, hashlib.sha256
        ).digest()
        assert call(2, "hello", [{"proof": proof}])["auth"] == "ok"

        x = np.ascontiguousarray(pixels[:4], dtype="<f4")
        tensor = {"dtype": "<f4", "shape": list(x.shape), "data": x.tobytes()}
        outputs = call(3, "infer", ["digits-small", {"X": tensor}, {"request_id": "raw-1"}])
        label = outputs["label"]
        assert label["dtype"] == "<i8" and label["shape"] == [4]
        np.testing.assert_array_equal(np.frombuffer(label["data"], "<i8"), labels[:4])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_node_cleanly(tmp_path: Path, signum: int) -> None:
    process, port = start_node_process(tmp_path, name="sig-node", key=None)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert client.ping() > 0
        process.send_signal(signum)
        assert process.wait(timeout=15) == 0
    finally:
        stop_process(process)
    log = (tmp_path / "sig-node.log").read_text()
    assert "Traceback" not in log
    assert "OPEN mesh" in log  # the node warned that it runs without a key
    # The port is free again.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_bad_configuration_exits_with_a_clear_message(tmp_path: Path) -> None:
    short_key = tmp_path / "short.key"
    short_key.write_text("tooshort")
    result = run_cli(
        "node", "--no-mdns", "--port", "0", "--host", "127.0.0.1", "--mesh-key-file", str(short_key)
    )
    assert result.returncode == 2
    assert "at least 16" in result.stderr
    result = run_cli(
        "node", "--no-mdns", "--port", "0", "--host", "127.0.0.1", "--model", "no-such-model"
    )
    assert result.returncode == 2
    assert "no-such-model" in result.stderr
    result = run_cli("node", "--no-mdns", "--port", "http")
    assert result.returncode == 2
    assert "--port must be a port number" in result.stderr


@pytest.mark.parametrize("command", ["node", "infer", "models", "status", "demo"])
def test_every_subcommand_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "usage: edgemesh" in result.stdout
    assert len(result.stdout.splitlines()) > 5


def test_python_dash_m_mesh_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mesh", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("edgemesh ")
