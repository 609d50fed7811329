"""Chaos under load: real node processes, one independent client, faults on a schedule.

The driver behind ``benchmarks/chaos.py`` (which prints its figures) and
``tests/system/test_chaos.py`` (its short twin, which asserts on them): one
module, so the two cannot drift apart. :func:`run_chaos` does it all and
always stops every process it started, on Ctrl-C too.

* **Nodes**: ``config.nodes`` ``edgemesh node`` processes on 127.0.0.1,
  started as a user would through :mod:`mesh.demo.processes` (mDNS, when
  on, bound to 127.0.0.1), with one fresh mesh key. Each is a one-slot
  emulated device (``--emulate-speed F --emulate-service-ms MS``: the real
  model runs, the call is padded to ``MS / F``), serving only digits-small.
  Discovery ``peer``: ``--no-mdns`` and every other node known so far as a
  ``--peer``; ``mdns``: no peers given. A node is restarted under its name
  and its port, so the client's and the peers' addresses stay right.
* **Load**: one :class:`MeshClient` given every node's address, sending
  requests at a fixed rate (open loop) with request ids ``chaos-SEED-I``.
  Request ``I`` carries held-out digit ``I mod len``; the right answer is
  onnxruntime's, run here on the same row, so a wrong (or swapped) answer
  shows. The client's timeout outlasts the run, so a request the mesh never
  answers stays unanswered and is counted *lost*, not hidden as a timeout.
* **Faults**: every ``fault_every_s`` one node, drawn with the seed among
  those up and seen alive by every other, gets ``kill`` (SIGKILL; restarted
  ``restart_after_s`` after it exited), ``term`` (SIGTERM, which lets it
  drain; SIGKILL if it has not exited within ``term_wait_s``; then
  restarted) or ``stop`` (SIGSTOP for ``stop_for_s``, then SIGCONT). The
  kinds are dealt from a seeded shuffle so each comes up as often, and
  every ``entry_every``-th fault hits the node the client is using (the
  requests' owner), so owner death is sure to be among them. One fault at a
  time: the next waits for the last to be over (node back and ready).
* **Watching**: each node's ``status()`` is polled every ``poll_s``; a
  fault is *detected* by a survivor (a node that reported the victim
  ``alive`` when the fault began) once it reports the victim ``dead``.

Counted per request id at the client: ok, wrong, error (by code), lost (no
answer and no error by the end of the run plus ``grace_s``) and doubled
(more than one outcome for one id, or an answer carrying another call's
id). The SDK hands back one outcome per call, so doubled counts what a
client can see; a node answering one RPC twice would be dropped by the RPC
layer, not counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import secrets
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mesh.demo.processes import read_ready, spawn_node, stop_processes
from mesh.errors import MeshError
from mesh.sdk.client import MeshClient
from tests.helpers import MODELS_DIR
from tests.helpers.chaos_results import (
    FAULT_KINDS,
    Call,
    ChaosConfig,
    ChaosResult,
    Fault,
    recovery_times,
)

__all__ = [
    "FAULT_KINDS",
    "Call",
    "ChaosConfig",
    "ChaosResult",
    "Fault",
    "run_chaos",
]

MODEL = "digits-small"
READY_TIMEOUT_S = 60.0
FORM_TIMEOUT_S = 60.0
STATUS_TIMEOUT_S = 2.0
ENTRY_WAIT_S = 3.0  # for the client's node to be seen alive by all before it is hit


# --- the expected answers ----------------------------------------------------------------


def reference() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """The held-out digits, and onnxruntime's labels and probabilities for each, run here."""
    with np.load(MODELS_DIR / "digits-test.npz") as data:
        rows = data["X"].astype(np.float32)
    session = ort.InferenceSession(
        str(MODELS_DIR / f"{MODEL}.onnx"), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(["label", "probabilities"], {"X": rows})
    return rows, labels, probabilities


# --- the processes -------------------------------------------------------------------------


class ChaosFleet:
    """The node processes; :meth:`stop_all` stops every one, stopped (SIGSTOP) ones included."""

    def __init__(self, workdir: Path, config: ChaosConfig) -> None:
        self.workdir = workdir
        self.config = config
        self.key = secrets.token_hex(32).encode()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.lives: Counter[str] = Counter()
        self._all: list[subprocess.Popen[bytes]] = []

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def _flags(self, name: str) -> list[str]:
        config = self.config
        flags = [
            "--model",
            MODEL,
            "--slots",
            "1",
            "--executor-threads",
            "1",
            "--emulate-speed",
            f"{config.speed(config.names.index(name)):g}",
            "--emulate-service-ms",
            f"{config.service_ms:g}",
        ]
        if name in self.ports:  # a restart keeps its port: everyone knows it by that
            flags += ["--port", str(self.ports[name])]
        if config.discovery == "peer":
            flags.append("--no-mdns")
            for other in sorted(self.ports):
                if other != name:
                    flags += ["--peer", self.address(other)]
        return flags

    async def start(self, name: str) -> None:
        """Start (or restart) ``name`` and wait until it listens."""
        log = self.workdir / f"{name}.log"
        if self.lives[name] and log.exists():
            # spawn_node truncates the log: keep each earlier life's.
            log.rename(self.workdir / f"{name}.life{self.lives[name]}.log")
        self.lives[name] += 1
        process = spawn_node(self.workdir, name=name, key=self.key, extra=self._flags(name))
        self.processes[name] = process
        self._all.append(process)
        ready = self.workdir / f"{name}.ready.json"
        async with asyncio.timeout(READY_TIMEOUT_S):
            # Polled: a file and a child process give nothing to await.
            while True:
                if ready.exists() or process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        # Parses the file, or raises PeerUnavailable with the log if it exited.
        self.ports[name] = int(read_ready(process, self.workdir, name, timeout=0)["rpc_port"])

    async def wait_exit(self, name: str, timeout: float) -> int | None:
        process = self.processes[name]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    if process.poll() is not None:
                        break
                    await asyncio.sleep(0.01)
        return process.poll()

    def signal(self, name: str, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.processes[name].send_signal(sig)

    def stop_all(self) -> None:
        for process in self._all:
            if process.poll() is None:
                # A stopped process would hold SIGTERM until continued.
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGCONT)
        stop_processes(self._all, timeout=10.0)

    def tracebacks(self) -> list[str]:
        """The logs (every life) that hold a Python traceback."""
        return sorted(
            path.name
            for path in self.workdir.glob("*.log")
            if "Traceback" in path.read_text(errors="replace")
        )


# --- watching --------------------------------------------------------------------------------


class Watcher:
    """Polls every node's status; keeps the latest view of each and marks detections."""

    def __init__(self, fleet: ChaosFleet, result: ChaosResult) -> None:
        self.fleet = fleet
        self.result = result
        self.views: dict[str, dict[str, str]] = {}  # observer -> {peer: state}
        self._formed = asyncio.Event()

    def seen_alive_by_all(self, name: str) -> bool:
        others = [n for n in self.fleet.config.names if n != name]
        return all(self.views.get(o, {}).get(name) == "alive" for o in others)

    async def watch(self, name: str) -> None:
        """Poll ``name`` until cancelled, reconnecting when it went away."""
        config = self.fleet.config
        while True:
            try:
                async with MeshClient(
                    self.fleet.address(name),
                    mesh_key=self.fleet.key,
                    timeout=STATUS_TIMEOUT_S,
                    connect_timeout=STATUS_TIMEOUT_S,
                    heartbeat=None,
                ) as client:
                    while True:
                        asked = time.monotonic()
                        status = await client.status()
                        self._saw(name, asked, status)
                        await asyncio.sleep(config.poll_s)
            except MeshError:
                self.views.pop(name, None)
                await asyncio.sleep(config.poll_s)

    def _saw(self, observer: str, asked: float, status: dict[str, Any]) -> None:
        view = {p["name"]: p["state"] for p in status["peers"]}
        self.views[observer] = view
        if all(self.seen_alive_by_all(name) for name in self.fleet.config.names):
            self._formed.set()
        now = time.monotonic()
        for fault in self.result.faults:
            if (
                observer in fault.survivors
                and observer not in fault.detected
                and asked >= fault.at
                and view.get(fault.node) == "dead"
            ):
                fault.detected[observer] = now

    async def formed(self) -> None:
        """Wait until every node reports every other alive."""
        async with asyncio.timeout(FORM_TIMEOUT_S):
            await self._formed.wait()


# --- load and faults -------------------------------------------------------------------------


class Chaos:
    """One run's load, faults and watching, over a started fleet."""

    def __init__(self, fleet: ChaosFleet, result: ChaosResult) -> None:
        self.fleet = fleet
        self.config = fleet.config
        self.result = result
        self.watcher = Watcher(fleet, result)
        self.rows, self.labels, self.probabilities = reference()
        self.rng = random.Random(self.config.seed)

    async def run(self) -> None:
        config = self.config
        async with asyncio.TaskGroup() as watching:
            pollers = [watching.create_task(self.watcher.watch(name)) for name in config.names]
            try:
                await self.watcher.formed()
                await self._load_and_faults()
            finally:
                for poller in pollers:  # they poll until told to stop
                    poller.cancel()

    async def _load_and_faults(self) -> None:
        config = self.config
        result = self.result
        result.started = time.monotonic()
        result.load_stopped = result.started + config.duration_s
        # The client waits longer than the run lasts: what the mesh never
        # answers stays unanswered (lost), rather than turning into RpcTimeout.
        timeout = config.duration_s + config.grace_s + 60.0
        addresses = [self.fleet.address(name) for name in config.names]
        async with MeshClient(addresses, mesh_key=self.fleet.key, timeout=timeout) as client:
            with contextlib.suppress(TimeoutError):
                async with (
                    asyncio.timeout_at(self._loop_time(result.load_stopped + config.grace_s)),
                    asyncio.TaskGroup() as tasks,
                ):
                    tasks.create_task(self._faults(client))
                    await self._send(client, tasks)
        result.ended = time.monotonic()

    @staticmethod
    def _loop_time(monotonic: float) -> float:
        loop = asyncio.get_running_loop()
        return loop.time() + (monotonic - time.monotonic())

    async def _send(self, client: MeshClient, tasks: asyncio.TaskGroup) -> None:
        config = self.config
        in_flight = asyncio.Semaphore(config.max_in_flight)
        interval = 1.0 / config.rate
        next_at = self.result.started
        for index in itertools.count():
            now = time.monotonic()
            if now >= self.result.load_stopped:
                return
            await asyncio.sleep(max(0.0, next_at - now))
            next_at += interval
            await in_flight.acquire()
            call = Call(f"chaos-{config.seed}-{index}", time.monotonic())
            self.result.calls.append(call)
            tasks.create_task(self._one(client, call, index, in_flight))

    async def _one(
        self, client: MeshClient, call: Call, index: int, in_flight: asyncio.Semaphore
    ) -> None:
        row = index % len(self.rows)
        try:
            answer = await client.infer(
                MODEL,
                {"X": self.rows[row : row + 1]},
                request_id=call.rid,
                deadline=self.config.deadline_s,
            )
        except MeshError as exc:
            self._record(call, exc.code, exc.message)
        except Exception as exc:  # a client bug: an outcome to count, not a crash
            self._record(call, f"{type(exc).__name__} (not a MeshError)", str(exc))
        else:
            right = (
                answer.request_id == call.rid
                and int(answer["label"][0]) == int(self.labels[row])
                and np.allclose(answer["probabilities"][0], self.probabilities[row], atol=1e-5)
            )
            call.node, call.ran_on = answer.node, answer.ran_on
            if answer.request_id != call.rid:
                self.result.outcomes[answer.request_id] += 1
            self._record(call, "ok" if right else "wrong", "")
        finally:
            in_flight.release()

    def _record(self, call: Call, outcome: str, message: str) -> None:
        self.result.outcomes[call.rid] += 1
        if call.outcome:  # a second outcome for one call: keep the first
            return
        call.done = time.monotonic()
        call.outcome = outcome
        call.message = message

    async def _faults(self, client: MeshClient) -> None:
        config = self.config
        kinds = list(config.faults)
        self.rng.shuffle(kinds)
        if not kinds:
            return
        for k in itertools.count(1):
            at = self.result.started + k * config.fault_every_s
            if at >= self.result.load_stopped:
                return
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if time.monotonic() >= self.result.load_stopped:
                return
            entry = config.entry_every > 0 and k % config.entry_every == 0
            victim = await self._victim(client, entry=entry)
            using = self.fleet.address(victim) == client.address
            await self._fault(kinds[(k - 1) % len(kinds)], victim, entry=using)

    async def _victim(self, client: MeshClient, *, entry: bool) -> str:
        """A node seen alive by every other (so that its detection is this fault's)."""
        names = self.config.names
        if entry:
            (using,) = (n for n in names if self.fleet.address(n) == client.address)
            # A node restarted by the last fault may not know it yet.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ENTRY_WAIT_S):
                    while True:
                        if self.watcher.seen_alive_by_all(using):
                            break
                        await asyncio.sleep(self.config.poll_s)
            return using
        ready = [n for n in names if self.watcher.seen_alive_by_all(n)]
        return self.rng.choice(ready or names)

    async def _fault(self, kind: str, name: str, *, entry: bool) -> None:
        config = self.config
        fault = Fault(
            kind,
            name,
            time.monotonic(),
            entry=entry,
            # Those that saw it alive; a just-restarted node may not have yet.
            survivors=tuple(
                n
                for n in config.names
                if n != name and self.watcher.views.get(n, {}).get(name) == "alive"
            ),
        )
        self.result.faults.append(fault)
        if kind == "stop":
            self.fleet.signal(name, signal.SIGSTOP)
            try:
                await asyncio.sleep(config.stop_for_s)
            finally:
                self.fleet.signal(name, signal.SIGCONT)
            fault.over = time.monotonic()
            return
        if kind == "kill":
            self.fleet.signal(name, signal.SIGKILL)
            fault.exit_code = await self.fleet.wait_exit(name, 10.0)
        else:
            self.fleet.signal(name, signal.SIGTERM)
            fault.exit_code = await self.fleet.wait_exit(name, config.term_wait_s)
            if fault.exit_code is None:
                fault.note = f"still running {config.term_wait_s:g} s after SIGTERM; SIGKILLed"
                self.fleet.signal(name, signal.SIGKILL)
                fault.exit_code = await self.fleet.wait_exit(name, 10.0)
        fault.exit_s = time.monotonic() - fault.at
        await asyncio.sleep(config.restart_after_s)
        await self.fleet.start(name)
        fault.over = time.monotonic()


def run_chaos(config: ChaosConfig, workdir: Path) -> ChaosResult:
    """Start the fleet, run load and faults, and stop every process, whatever happens."""
    if config.discovery not in ("peer", "mdns"):
        raise ValueError(f"discovery must be 'peer' or 'mdns', got {config.discovery!r}")
    if unknown := set(config.faults) - set(FAULT_KINDS):
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; expected {FAULT_KINDS}")
    fleet = ChaosFleet(workdir, config)
    result = ChaosResult(config)

    async def main() -> None:
        first, *rest = config.names
        await fleet.start(first)  # the others' bootstrap peer
        async with asyncio.TaskGroup() as starting:
            for name in rest:
                starting.create_task(fleet.start(name))
        await Chaos(fleet, result).run()

    try:
        asyncio.run(main())
    finally:
        fleet.stop_all()
    recovery_times(result)
    if broken := fleet.tracebacks():
        result.notes.append(f"tracebacks in {', '.join(broken)}")
    return result
