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
from typing import Any

from mesh.errors import PeerUnavailable

__all__ = [
    "free_port",
    "node_command",
    "read_ready",
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
    return _command("node", name=name, ready=ready, port=0, log_level="warning", extra=extra)


def start_node_process(
    workdir: Path, *, name: str, key: bytes | None, extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``edgemesh node`` on 127.0.0.1 with a free port; returns it and its port."""
    process = spawn_node(workdir, name=name, key=key, extra=extra)
    return process, int(_ready_or_stopped(process, workdir, name)["rpc_port"])


def start_gateway_process(
    workdir: Path,
    *,
    name: str = "gateway",
    port: int = 0,
    extra: Sequence[str] = (),
    log_level: str = "warning",
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``edgemesh gateway`` on 127.0.0.1; returns it and its HTTP port.

    Its ready file, ``NAME.ready.json`` in ``workdir``, holds ``{name, host, http_port}``.
    """
    process = spawn_gateway(workdir, name=name, port=port, extra=extra, log_level=log_level)
    return process, int(_ready_or_stopped(process, workdir, name)["http_port"])


def spawn_node(
    workdir: Path, *, name: str, key: bytes | None, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``edgemesh node`` without waiting for it; see :func:`wait_ready`."""
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
    workdir: Path,
    *,
    name: str = "gateway",
    port: int = 0,
    extra: Sequence[str] = (),
    log_level: str = "warning",
) -> subprocess.Popen[bytes]:
    """Start ``edgemesh gateway`` without waiting for it; see :func:`wait_ready`."""
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    command = _command(
        "gateway", name=name, ready=ready, port=port, log_level=log_level, extra=extra
    )
    # Appended to: a restarted gateway's log keeps its previous life's.
    return _spawn(command, workdir / f"{name}.log", "ab")


def _command(
    kind: str, *, name: str, ready: Path, port: int, log_level: str, extra: Sequence[str]
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mesh",
        kind,
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ready-file",
        str(ready),
        "--log-level",
        log_level,
        *extra,
    ]


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
    return int(read_ready(process, workdir, name, timeout)[key])


def read_ready(
    process: subprocess.Popen[bytes], workdir: Path, name: str, timeout: float = READY_TIMEOUT_S
) -> dict[str, Any]:
    """``name``'s ready file, once the process has written it; PeerUnavailable if it exits first."""
    ready = workdir / f"{name}.ready.json"
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None:
            output = (workdir / f"{name}.log").read_text(errors="replace")
            raise PeerUnavailable(f"{name} exited with {process.returncode}:\n{output}")
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{name} did not start within {timeout:.0f} s")
        time.sleep(0.05)
    info: dict[str, Any] = json.loads(ready.read_text())
    return info


def _ready_or_stopped(process: subprocess.Popen[bytes], workdir: Path, name: str) -> dict[str, Any]:
    """:func:`read_ready`, stopping the process if that fails or is interrupted."""
    try:
        return read_ready(process, workdir, name)
    except BaseException:
        # Ctrl-C or a failure while waiting must not leave the process running.
        stop_process(process)
        raise


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
