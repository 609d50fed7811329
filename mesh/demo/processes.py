"""Starting and stopping ``edgemesh`` processes on 127.0.0.1, as a user would.

Used by the demo, the system tests and the benchmarks. Each process logs to
``NAME.log`` and writes ``NAME.ready.json`` (with its ports) in a working
directory; mDNS, where on, stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mesh.errors import PeerUnavailable

__all__ = [
    "free_port",
    "node_command",
    "spawn_gateway",
    "spawn_node",
    "start_gateway_process",
    "start_node_process",
    "stop_process",
    "stop_processes",
    "wait_ready",
]

READY_TIMEOUT_S = 60.0


def node_command(name: str, ready: Path, extra: Sequence[str] = ()) -> list[str]:
    """The command line of an ``edgemesh node`` on 127.0.0.1 with a free port.

    It writes ``ready`` (with its port) once it listens, and logs warnings only.
    """
    return [
        sys.executable,
        "-m",
        "mesh",
        "node",
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--ready-file",
        str(ready),
        "--log-level",
        "warning",
        *extra,
    ]


def start_node_process(
    workdir: Path, *, name: str, key: bytes | None, extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``edgemesh node`` on 127.0.0.1 with a free port; returns it and its port."""
    process = spawn_node(workdir, name=name, key=key, extra=extra)
    try:
        port = wait_ready(process, workdir, name)
    except BaseException:
        # Ctrl-C or a failure while waiting must not leave the node running.
        stop_process(process)
        raise
    return process, port


def start_gateway_process(
    workdir: Path, *, port: int = 0, extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``edgemesh gateway`` on 127.0.0.1; returns it and its HTTP port."""
    process = spawn_gateway(workdir, port=port, extra=extra)
    try:
        http_port = wait_ready(process, workdir, "gateway", "http_port")
    except BaseException:
        stop_process(process)
        raise
    return process, http_port


def spawn_node(
    workdir: Path, *, name: str, key: bytes | None, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    ready = workdir / f"{name}.ready.json"
    # mDNS stays on loopback: the demo never multicasts on the LAN.
    command = node_command(name, ready, ["--interface", "127.0.0.1", *(extra or [])])
    if key is not None:
        key_file = workdir / f"{name}.key"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        command += ["--mesh-key-file", str(key_file)]
    # A node restarted under the same name must not be taken for ready on
    # the strength of its previous life's file.
    ready.unlink(missing_ok=True)
    return _spawn(command, workdir / f"{name}.log", "wb")


def spawn_gateway(
    workdir: Path, *, port: int = 0, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    ready = workdir / "gateway.ready.json"
    ready.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "mesh",
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ready-file",
        str(ready),
        "--log-level",
        "warning",
        *(extra or []),
    ]
    # Appended to: a restarted gateway's log keeps its previous life's.
    return _spawn(command, workdir / "gateway.log", "ab")


def _spawn(command: list[str], log: Path, mode: str) -> subprocess.Popen[bytes]:
    with log.open(mode) as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)


def wait_ready(
    process: subprocess.Popen[bytes],
    workdir: Path,
    name: str,
    key: str = "rpc_port",
    timeout: float = READY_TIMEOUT_S,
) -> int:
    """The port under ``key`` in ``name``'s ready file, once the process has written it."""
    ready = workdir / f"{name}.ready.json"
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            output = (workdir / f"{name}.log").read_text(errors="replace")
            raise PeerUnavailable(f"{name} exited with {process.returncode}:\n{output}")
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{name} did not start within {timeout:.0f} s")
        time.sleep(0.05)
    return int(json.loads(ready.read_text())[key])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
    return stop_processes([process], timeout)[0]


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[int]:
    """Stop them all at once (SIGTERM, then SIGKILL after ``timeout``); their exit statuses."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return [process.returncode for process in processes]


def free_port() -> int:
    """A port free on 127.0.0.1 now.

    The nodes must be told the gateway's URL when they start, and starting
    all four processes at once saves seconds of onnxruntime imports; the
    port could in principle be taken in between, which fails loudly.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
