"""``edgemesh demo``: a node on this machine, real digits through it, figures out.

It starts ``edgemesh node`` as a separate process on 127.0.0.1 with a fresh
mesh key, as a user would, classifies the held-out handwritten digits
through it with the SDK (one request per digit, many in flight), prints
accuracy and latency, and stops the node. Nothing leaves loopback, and the
node is stopped even on Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mesh.client import MeshClient
from mesh.config import bundled_models_dir
from mesh.errors import ConfigError, PeerUnavailable

__all__ = ["node_command", "run_demo", "start_node_process", "stop_process"]

_READY_TIMEOUT_S = 60.0


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
    log_file = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    try:
        port = _wait_ready(process, ready, workdir / f"{name}.log", name)
    except BaseException:
        # Ctrl-C or a failure while waiting must not leave the node running.
        stop_process(process)
        raise
    return process, port


def start_gateway_process(
    workdir: Path, *, port: int = 0, extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``edgemesh gateway`` on 127.0.0.1; returns it and its HTTP port."""
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
    log_file = (workdir / "gateway.log").open("ab")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    try:
        http_port = _wait_ready(process, ready, workdir / "gateway.log", "gateway", "http_port")
    except BaseException:
        stop_process(process)
        raise
    return process, http_port


def _wait_ready(
    process: subprocess.Popen[bytes], ready: Path, log: Path, name: str, key: str = "rpc_port"
) -> int:
    """The port under ``key`` in the ready file, once the process has written it."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            raise PeerUnavailable(f"{name} exited with {process.returncode}:\n{output}")
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"{name} did not start within {_READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    return int(json.loads(ready.read_text())[key])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def load_test_digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    """The held-out digits, their labels, and digits-small's accuracy per the manifest."""
    models = bundled_models_dir()
    manifest = tomllib.loads((models / "manifest.toml").read_text())
    with np.load(models / manifest["dataset"]["file"]) as data:
        return data["X"], data["y"], float(manifest["models"]["digits-small"]["accuracy"])


def _progress(done: int, total: int, started: float) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // total
    rate = done / max(time.perf_counter() - started, 1e-9)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r  [{bar}] {done}/{total}  {rate:,.0f} req/s")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def _classify(
    port: int, key: bytes, pixels: np.ndarray[Any, Any], concurrency: int
) -> tuple[np.ndarray[Any, Any], list[float], float, dict[str, Any]]:
    labels = np.empty(len(pixels), dtype=np.int64)
    latencies: list[float] = []
    started = time.perf_counter()
    done = 0
    async with MeshClient(f"127.0.0.1:{port}", mesh_key=key) as client:
        print(f"  connected to node {client.node.get('name')} (mesh {client.node.get('mesh_id')})")
        slots = asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            nonlocal done
            async with slots:
                begin = time.perf_counter()
                outputs = await client.infer("digits-small", {"X": pixels[index : index + 1]})
                latencies.append(time.perf_counter() - begin)
            labels[index] = outputs["label"][0]
            done += 1
            _progress(done, len(pixels), started)

        async with asyncio.TaskGroup() as tasks:
            for index in range(len(pixels)):
                tasks.create_task(one(index))
        elapsed = time.perf_counter() - started
        status = await client.status()
    return labels, latencies, elapsed, status


def run_demo(*, samples: int | None = None, concurrency: int = 32) -> int:
    """Run the demo; returns the exit status (0 when accuracy matches the manifest)."""
    pixels, truth, expected_accuracy = load_test_digits()
    if samples is not None:
        pixels, truth = pixels[:samples], truth[:samples]
    if len(pixels) == 0:
        raise ConfigError("no digits to classify")
    key = secrets.token_hex(32).encode()
    print("edgemesh demo: one node on 127.0.0.1, real handwritten digits, a fresh mesh key")
    with tempfile.TemporaryDirectory(prefix="edgemesh-demo-") as workdir:
        process, port = start_node_process(Path(workdir), name="demo-node", key=key)
        try:
            print(f"  node started (pid {process.pid}, port {port})")
            print(f"  classifying {len(pixels)} held-out digits, {concurrency} in flight")
            labels, latencies, elapsed, status = asyncio.run(
                _classify(port, key, pixels, concurrency)
            )
        finally:
            code = stop_process(process)
    accuracy = float(np.mean(labels == truth))
    latencies_ms = sorted(1000 * x for x in latencies)
    p99 = latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))]
    counters = status["counters"]
    rows = [
        ("requests", f"{len(pixels)}"),
        ("served by the node", f"{counters['served']} (failed {counters['failed']})"),
        ("accuracy", f"{accuracy:.4f}"),
        ("manifest accuracy", f"{expected_accuracy:.4f}" if samples is None else "(subset)"),
        ("latency p50", f"{statistics.median(latencies_ms):.2f} ms"),
        ("latency p99", f"{p99:.2f} ms"),
        ("throughput", f"{len(pixels) / elapsed:,.0f} req/s"),
        ("node exit status", f"{code}"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    matches = samples is not None or abs(accuracy - expected_accuracy) < 1e-9
    print()
    print("OK: accuracy matches the manifest" if matches else "MISMATCH with the manifest")
    return 0 if matches and code == 0 else 1
