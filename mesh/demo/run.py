"""``edgemesh demo``: three emulated devices and a cloud gateway on this machine, real digits.

It starts, as separate processes on 127.0.0.1 and with a fresh mesh key,
three ``edgemesh node``\\ s that emulate devices of different speeds (each
runs the real model, then pads the call to the device's service time) and
an ``edgemesh gateway`` that stands in for the cloud. The nodes find each
other with mDNS bound to 127.0.0.1, as they would on a LAN. The demo then
sends every held-out handwritten digit at once to the slowest node, each
with a deadline the mesh alone cannot meet for the whole burst: the faster
devices steal work, the overflow goes to the gateway. It ends with a table
of where the requests ran, accuracy against the true labels, and latency,
then (with the gateway) a joint-inference act: see :mod:`mesh.demo.joint_act`.
The burst's requests and bookkeeping are :mod:`mesh.demo.burst`'s.

Nothing leaves loopback, and every process is stopped (SIGTERM, then
SIGKILL) even on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mesh.cli.client_commands import format_table
from mesh.config import bundled_models_dir
from mesh.demo.burst import Burst, progress_line, send_burst, show_progress
from mesh.demo.joint_act import CLOUD_MODEL, node_flags, print_act, run_act
from mesh.demo.processes import (
    free_port,
    spawn_gateway,
    spawn_node,
    stop_processes,
    wait_ready,
)
from mesh.demo.stopping import STOP_SIGNALS, StopSignals, ctrl_c_ignored, interrupts_deferred
from mesh.errors import ConfigError, MeshError, PeerUnavailable
from mesh.sdk.client import MeshClient

__all__ = [
    "DEVICES",
    "Device",
    "load_test_digits",
    "run_demo",
]

MODEL = "digits-small"


@dataclass(frozen=True)
class Device:
    """An emulated device: ``speed`` times as fast as the reference device."""

    name: str
    speed: float


# The burst goes to the first, slowest one, so the others have to steal.
DEVICES = (Device("pi-zero", 1.0), Device("laptop", 2.0), Device("edge-box", 4.0))
# The reference device's time per call: 20 ms, so the three above serve
# 50 + 100 + 200 = 350 requests a second, whatever two cores could do.
SERVICE_MS = 20.0
# The cloud: farther away (20 ms a call) but wider (8 at once).
GATEWAY_SLOTS = 32
GATEWAY_SERVICE_MS = 20.0
# The mesh finishes about 300 of the 450 digits within 1 s (less the
# scheduler's 20% headroom), so the rest visibly goes to the gateway.
DEFAULT_DEADLINE_MS = 1000.0
_FORM_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 5.0


@dataclass
class _Fleet:
    """The demo's processes, stopped together however the demo ends."""

    workdir: Path
    key: bytes = field(default_factory=lambda: secrets.token_hex(32).encode())
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, gateway: bool) -> None:
        """Start every process at once, then wait until each listens."""
        with interrupts_deferred():
            self._spawn_all(gateway)
        for name, process in self.processes.items():
            key = "http_port" if name == "gateway" else "rpc_port"
            self.ports[name] = wait_ready(process, self.workdir, name, key, timeout=30.0)

    def _spawn_all(self, gateway: bool) -> None:
        gateway_port = free_port() if gateway else 0
        if gateway:
            extra = ["--name", "gateway", "--model", MODEL, "--slots", str(GATEWAY_SLOTS)]
            extra += ["--emulate-service-ms", str(GATEWAY_SERVICE_MS), "--model", CLOUD_MODEL]
            self.processes["gateway"] = spawn_gateway(self.workdir, port=gateway_port, extra=extra)
        for device in DEVICES:
            flags = ["--model", MODEL, "--slots", "1", "--executor-threads", "1"]
            flags += ["--emulate-speed", str(device.speed)]
            flags += ["--emulate-service-ms", str(SERVICE_MS)]
            if gateway:
                flags += ["--gateway", f"http://127.0.0.1:{gateway_port}"]
                flags += node_flags() if device is DEVICES[0] else []
            self.processes[device.name] = spawn_node(
                self.workdir, name=device.name, key=self.key, extra=flags
            )

    def check_alive(self) -> None:
        """Raise, with its log, if any process has died."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")
                raise PeerUnavailable(f"{name} exited with {process.returncode}:\n{log[-2000:]}")

    def stop(self) -> dict[str, int]:
        """Stop every process; their exit statuses by name."""
        with ctrl_c_ignored():
            codes = stop_processes(list(self.processes.values()), _STOP_TIMEOUT_S)
        return dict(zip(self.processes, codes, strict=True))


# --- the digits, and driving the mesh (the burst itself is mesh.demo.burst's) ---


def load_test_digits() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    """The held-out digits, their labels, and digits-small's accuracy per the manifest."""
    models = bundled_models_dir()
    manifest = tomllib.loads((models / "manifest.toml").read_text())
    with np.load(models / manifest["dataset"]["file"]) as data:
        return data["X"], data["y"], float(manifest["models"][MODEL]["accuracy"])


async def _wait_formed(fleet: _Fleet) -> float:
    """Until every node sees the other two alive and knows their speed; seconds it took."""
    started = time.monotonic()
    names = [device.name for device in DEVICES]
    views: dict[str, list[str]] = {}
    try:
        async with asyncio.timeout(_FORM_TIMEOUT_S):
            while True:
                fleet.check_alive()
                for name in names:
                    status = await _status(fleet, name)
                    views[name] = sorted(
                        peer["name"]
                        for peer in status["peers"]
                        if peer["state"] == "alive" and peer["service_s"].get(MODEL)
                    )
                if all(len(views[name]) == len(names) - 1 for name in names):
                    return time.monotonic() - started
                await asyncio.sleep(0.1)
    except TimeoutError:
        seen = "; ".join(f"{name} sees {views.get(name) or 'nobody'}" for name in names)
        raise PeerUnavailable(
            f"the nodes did not find each other over mDNS on 127.0.0.1 within "
            f"{_FORM_TIMEOUT_S:.0f} s ({seen}); is multicast on loopback blocked?"
        ) from None


async def _status(fleet: _Fleet, name: str) -> dict[str, Any]:
    async with MeshClient(f"127.0.0.1:{fleet.ports[name]}", mesh_key=fleet.key) as client:
        return await client.status()


async def _drive(
    fleet: _Fleet, pixels: np.ndarray[Any, Any], deadline: float, burst: Burst
) -> tuple[float, dict[str, dict[str, Any]]]:
    """Wait for the mesh, send the burst with a progress bar, then read every node's status."""
    formed = await _wait_formed(fleet)
    print(f"  mesh formed over mDNS in {formed:.1f} s", flush=True)
    entry = DEVICES[0].name
    print(
        f"  sending {len(pixels)} digits at once to {entry}, "
        f"each with a deadline of {deadline * 1000:.0f} ms",
        flush=True,
    )
    # The whole burst rides one connection, as an app's single client would.
    client = MeshClient(f"127.0.0.1:{fleet.ports[entry]}", mesh_key=fleet.key)
    async with client, asyncio.TaskGroup() as tasks:
        bar = tasks.create_task(show_progress(burst)) if sys.stderr.isatty() else None
        try:
            await send_burst(client, MODEL, pixels, deadline, burst)
        finally:
            if bar is not None:
                bar.cancel()
    prefix = "\r" if sys.stderr.isatty() else ""
    sys.stderr.write(prefix + progress_line(burst) + "\n")
    sys.stderr.flush()
    statuses = {device.name: await _status(fleet, device.name) for device in DEVICES}
    if "gateway" in fleet.ports:
        burst.joint = await run_act(f"127.0.0.1:{fleet.ports[entry]}", fleet.key, pixels)
    return formed, statuses


async def _drive_until_stopped(
    stop: StopSignals,
    fleet: _Fleet,
    pixels: np.ndarray[Any, Any],
    deadline: float,
    burst: Burst,
) -> tuple[float, dict[str, dict[str, Any]]] | None:
    """:func:`_drive`, or None once Ctrl-C or SIGTERM stopped it.

    The loop takes both signals: a KeyboardInterrupt raised between two
    awaits would leave tasks whose exception nobody retrieves, each a
    traceback on the user's terminal.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_stop() -> None:
        stop.seen = True
        task.cancel()

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    in_main = threading.current_thread() is threading.main_thread()
    for signum in STOP_SIGNALS if in_main else ():
        loop.add_signal_handler(signum, on_stop)
    try:
        if stop.seen:  # noted before the loop took the signals over
            return None
        return await _drive(fleet, pixels, deadline, burst)
    except asyncio.CancelledError:
        if not stop.seen:
            raise
        task.uncancel()
        return None
    except MeshError:
        # A child stopped by the same Ctrl-C, seen first (see StopSignals).
        if not stop.seen:
            raise
        if task.cancelling():
            task.uncancel()
        return None
    finally:
        for signum, before in previous.items() if in_main else ():
            loop.remove_signal_handler(signum)
            # remove_signal_handler restores the default, not what was there.
            signal.signal(signum, before)


# --- the report -----------------------------------------------------------------


def _report(
    burst: Burst,
    statuses: dict[str, dict[str, Any]],
    truth: np.ndarray[Any, Any],
    gateway: bool,
) -> float | None:
    """Print the table and summary; returns the accuracy (None when nothing was answered)."""
    rows: list[list[object]] = []
    for device in DEVICES:
        counters = statuses[device.name]["counters"]
        rows.append(
            [
                device.name,
                f"{device.speed:g}x ({SERVICE_MS / device.speed:g} ms)",
                burst.ran_on[device.name],
                counters["stolen_in"],
                counters["stolen_out"],
            ]
        )
    if gateway:
        cloud = f"cloud ({GATEWAY_SLOTS} x {GATEWAY_SERVICE_MS:g} ms)"
        rows.append(["gateway", cloud, burst.ran_on["gateway"], "", ""])
    header = ["where", "device (emulated)", "answered", "stolen in", "stolen away"]
    print()
    for line in format_table(header, rows).splitlines():
        print(f"  {line}")
    # Said in the table's own words: the counters are the nodes', not the demo's guesses.
    print("  stolen in: taken from a busier node's queue and run here; stolen away: hand-overs")
    if gateway:
        print("  to a thief (a request may move twice); the gateway got what the mesh could not")
        print("  finish within the deadline. Devices are emulated: real model, padded calls.")
    else:
        print("  to a thief (a request may move twice); what the mesh could not finish within")
        print("  the deadline was refused (no gateway). Devices are emulated: real model, padded")
        print("  calls.")
    print()
    entry = statuses[DEVICES[0].name]["counters"]
    answered = sum(burst.ran_on.values())
    errors = ", ".join(f"{code} {n}" for code, n in sorted(burst.errors.items())) or "none"
    lines = [
        (
            "requests",
            f"{burst.total} in {burst.elapsed:.2f} s ({burst.total / burst.elapsed:,.0f}/s)",
        ),
        ("answered", f"{answered}, {entry['offloaded']} of them handed to the gateway"),
        ("errors", errors),
    ]
    if burst.latencies:
        latency_ms = [1000 * x for x in burst.latencies]
        p50, p99 = np.percentile(latency_ms, [50, 99])
        lines.append(("latency", f"p50 {p50:.0f} ms, p99 {p99:.0f} ms"))
    for name, value in lines:
        print(f"  {name:<9} {value}")
    for code, message in sorted(burst.error_examples.items()):
        print(f"  {code}: {message}")
    if burst.joint is not None:
        print_act(burst.joint, truth)
    answered_mask = burst.labels >= 0
    if not answered_mask.any():
        return None
    return float(np.mean(burst.labels[answered_mask] == truth[answered_mask]))


def run_demo(
    *,
    samples: int | None = None,
    deadline_ms: float = DEFAULT_DEADLINE_MS,
    gateway: bool = True,
    workdir: Path | None = None,
) -> int:
    """Run the demo; returns the exit status (0 when every digit was answered as expected).

    ``workdir`` keeps the processes' logs (default: a temporary directory,
    removed at the end). Ctrl-C stops everything and returns 130.
    """
    pixels, truth, manifest_accuracy = load_test_digits()
    if samples is not None:
        pixels, truth = pixels[:samples], truth[:samples]
    if len(pixels) == 0:
        raise ConfigError("no digits to classify")
    pixels = pixels.astype(np.float32)
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="edgemesh-demo-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    fleet = _Fleet(work)
    burst = Burst(len(pixels))
    names = ", ".join(f"{d.name} ({d.speed:g}x)" for d in DEVICES)
    print(f"edgemesh demo: {len(DEVICES)} emulated devices on 127.0.0.1, real handwritten digits")
    started = time.perf_counter()
    codes: dict[str, int] = {}
    stop_signals = StopSignals()
    try:
        with stop_signals.raising():
            try:
                # Said inside the try: a Ctrl-C the moment this line shows
                # must still go through the cleanup below.
                starting = " and a cloud gateway" if gateway else ""
                print(f"  starting nodes {names}{starting}", flush=True)
                fleet.start(gateway)
                print(f"  all started in {time.perf_counter() - started:.1f} s", flush=True)
                with stop_signals.noted():
                    driven = asyncio.run(
                        _drive_until_stopped(stop_signals, fleet, pixels, deadline_ms / 1000, burst)
                    )
                if driven is None or stop_signals.seen:
                    raise KeyboardInterrupt
                formed, statuses = driven
            finally:
                codes = fleet.stop()
    except KeyboardInterrupt:
        return _interrupted()
    except MeshError:
        if stop_signals.seen:
            return _interrupted()
        raise
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    accuracy = _report(burst, statuses, truth, gateway)
    print(
        f"  wall time {time.perf_counter() - started:.1f} s in all (mesh formed in {formed:.1f} s)"
    )
    print()
    return _verdict(burst, accuracy, manifest_accuracy if samples is None else None, gateway, codes)


def _interrupted() -> int:
    """Say, in one line, that the demo was stopped; the exit status of Ctrl-C."""
    # On a terminal the progress bar (or the echoed ^C) still holds the line.
    prefix = "\n" if sys.stderr.isatty() else ""
    print(f"{prefix}edgemesh demo: interrupted; every process stopped", file=sys.stderr)
    return 130


def _verdict(
    burst: Burst,
    accuracy: float | None,
    manifest_accuracy: float | None,
    gateway: bool,
    codes: dict[str, int],
) -> int:
    """Print the accuracy line and the outcome; the exit status."""
    problems = []
    if accuracy is not None:
        against = "" if manifest_accuracy is None else f" (manifest: {manifest_accuracy:.4f})"
        print(f"accuracy {accuracy:.4f} on {len(burst.latencies)} answered digits{against}")
        # The same model runs everywhere, gateway included: the figure must match.
        mismatch = manifest_accuracy is not None and abs(accuracy - manifest_accuracy) > 1e-9
        if mismatch and not burst.errors:
            problems.append("accuracy differs from the manifest's")
    # Without a gateway, refusing the overflow at once is the point being shown.
    expected = {"Overloaded"} if not gateway else set()
    unexpected = {code: n for code, n in burst.errors.items() if code not in expected}
    if unexpected:
        problems.append(f"{sum(unexpected.values())} requests failed")
    if burst.joint is not None and burst.joint.error:
        problems.append("the joint inference act failed")
    crashed = {name: code for name, code in codes.items() if code != 0}
    if crashed:
        problems.append(f"processes exited badly: {crashed}")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    refused = burst.errors["Overloaded"]
    answered = "every digit answered" if not refused else f"{refused} refused for want of a gateway"
    print(f"OK: {answered}, every process stopped cleanly")
    return 0
