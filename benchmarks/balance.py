"""Load balance by work stealing across N edgemesh node processes, against Dask (issue 4).

Run from the repository root (Dask comes with the bench extra:
``.venv/bin/pip install -e '.[bench]'``)::

    .venv/bin/python benchmarks/balance.py               # N = 2, 4, 8, 16; about 20 minutes
    .venv/bin/python benchmarks/balance.py --quick       # N = 2 and 4, 300 requests
    .venv/bin/python benchmarks/balance.py --sizes 4 --scenarios A,B --baselines steal,dask
    .venv/bin/python benchmarks/balance.py --json out.json --logs node-logs/

**Emulated devices.** Two cores cannot show the real parallel speed-up of 16
devices, so every node (and every Dask worker) emulates one: it runs the real
``digits-small`` model on the real input and returns the real output, then
pads the call to ``MS / F`` milliseconds, where ``MS`` is the reference
service time (``--service-ms``, 20 by default) and ``F`` the device's speed.
A node is started with ``--slots 1 --emulate-speed F --emulate-service-ms MS``
so that it is one device running one request at a time, with a capacity of
``F * 1000 / MS`` requests per second. Every table says so in its header.

Each mesh is ``N`` real ``edgemesh node`` processes on 127.0.0.1 with a fresh
mesh key, serving only ``--model digits-small``, mDNS off, every node after
the first given the first as its one ``--peer``. Before a scenario every node
must list the other ``N - 1`` as alive, each with a measured service time.
Requests come from this process through the async SDK, one ``MeshClient``
per entry node, pipelined on its connection.

Scenarios (``--requests`` requests each; speeds are all 1 unless said):

* **A**: a burst: every request issued at once, all entering node 0.
* **B**: the burst of A with speeds 1, 1, 2, 4 (the pattern repeated for
  larger N; node 0 is one of the slow ones). Needs N >= 4; skipped below.
* **C70**, **C90**: Poisson arrivals at 70 % and 90 % of the mesh's
  capacity (``sum(F) * 1000 / MS`` requests/s), 80 % of them entering node
  0, the rest spread uniformly over the other nodes. Seeded.
* **D**: arrivals evenly spaced in time at 70 % of capacity, round-robin
  over all nodes (deterministic). A balanced load: nothing should move.

Systems (``--baselines``):

* **steal** (edgemesh): the nodes as built, work stealing on.
* **nosteal**: the same nodes with ``--no-steal``: each node runs what enters it.
* **random**: ``--no-steal``, and the client sends each request to a node
  drawn uniformly at random (seeded), whatever the scenario's entry: the
  simple alternative to stealing.
* **dask**: ``distributed.LocalCluster(n_workers=N, threads_per_worker=1,
  processes=True)`` on 127.0.0.1, what a user might pick instead. Each task
  runs the same model with onnxruntime (one session per worker, loaded by a
  worker plugin) and sleeps to pad the call to ``MS / F``, ``F`` looked up by
  the worker's name (0..N-1). A request "entering node i" is a task
  submitted with ``workers=[worker i], allow_other_workers=True``, the
  closest thing Dask has: the scheduler places it on worker i, and only
  Dask's own work stealing moves it. Before each scenario one task per
  worker, under the scenario's key prefix, teaches Dask the task's duration,
  as the nodes' warm-up call teaches them theirs.

Figures:

* makespan: from the first request issued to the last answer; ideal
  makespan = total work / total speed = ``requests * MS / sum(F)``;
  **efficiency** = ideal / achieved. Bursts (A, B) only.
* latency: from a request's scheduled issue time (not the moment the
  generator got round to it) to its answer; p50 and p99. For C and D also the
  throughput and p99 / service time (``MS``).
* steals: requests moved, the sum over nodes of the ``stolen_out`` counter
  (a request moved twice counts twice); moves per request = steals /
  requests. For Dask: tasks that finished on another worker than the one
  they were submitted to (a task moved twice counts once).
* share: each node's part of the requests it ran (``served_local +
  stolen_in``, from ``status()`` read before and after), against its
  speed-weighted ideal ``F_i / sum(F)``.
* wrong: answers whose argmax differs from onnxruntime run in this process
  on the same input; failed: errors and requests not answered in time.
* per-request overhead: one request at a time, no emulation padding: ``N =
  min(--sizes)`` plain nodes (no emulation flags), 200 requests to node 0;
  a Dask cluster of as many workers, 200 unpadded tasks, each submitted
  after the previous answered; onnxruntime in this process as the floor.

Every await is under a timeout, every scenario is bounded in time, no mesh or
cluster starts after ``--budget`` seconds (a scenario running then is cut
off at it), and every process this script starts is stopped in a
``finally`` block, on Ctrl-C too. Nothing leaves loopback. It prints the
issue's targets beside the figures, and asserts nothing: a benchmark is not
a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import logging
import math
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import machine, machine_line
from rpc_overhead import direct_session
from stoppable import run_stoppable

from mesh.demo.processes import start_node_process, stop_process
from mesh.demo.run import load_test_digits
from mesh.errors import MeshError
from mesh.sdk.client import MeshClient

MODEL = "digits-small"
SPEED_PATTERN = (1.0, 1.0, 2.0, 4.0)
HOT_SHARE = 0.8  # of scenario C's requests, entering node 0
OVERHEAD_CALLS = 200
OVERHEAD_WARMUP = 20

FORM_TIMEOUT_S = 90.0  # every node sees every other alive, with a service time
CLUSTER_TIMEOUT_S = 180.0  # a Dask LocalCluster up with all its workers
STATUS_TIMEOUT_S = 10.0
POLL_S = 0.2
SETTLE_S = 0.5  # after the last answer, before the counters are read again
DASK_PLUGIN = "edgemesh-ort"

# The issue's targets (edgemesh with stealing). Never asserted; printed beside the figures.
TARGET_EFFICIENCY = {4: 0.95, 16: 0.90}
TARGET_MIXED_EFFICIENCY = 0.90
TARGET_P99_SERVICE = 10.0  # p99 at 90 % load, in service times

Array = np.ndarray[Any, Any]
Counters = list[dict[str, int]]


@dataclass(frozen=True)
class Scenario:
    name: str
    arrivals: str  # "burst", "poisson" or "even"
    mixed: bool  # speeds 1, 1, 2, 4 repeated; else all 1
    load: float = 0.0  # share of capacity offered (poisson and even)
    text: str = ""

    @property
    def burst(self) -> bool:
        return self.arrivals == "burst"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("A", "burst", False, text="burst, all entering node 0, equal speeds"),
        Scenario("B", "burst", True, text="burst, all entering node 0, speeds 1,1,2,4 repeated"),
        Scenario(
            "C70",
            "poisson",
            False,
            0.7,
            "Poisson arrivals at 70% of capacity, 80% entering node 0, equal speeds",
        ),
        Scenario(
            "C90",
            "poisson",
            False,
            0.9,
            "Poisson arrivals at 90% of capacity, 80% entering node 0, equal speeds",
        ),
        Scenario(
            "D", "even", False, 0.7, "evenly spaced at 70% of capacity, round-robin, equal speeds"
        ),
    )
}
SYSTEMS = {"steal": "edgemesh", "nosteal": "no stealing", "random": "random push", "dask": "dask"}
COUNTERS = ("served_local", "stolen_in", "stolen_out", "requeued", "expired")
# Read too where a node reports them: how hard the thieves had to ask.
EXTRA_COUNTERS = ("steal_requests", "steals_empty")


def speeds_for(nodes: int, mixed: bool) -> tuple[float, ...]:
    if not mixed:
        return (1.0,) * nodes
    return tuple(SPEED_PATTERN[i % len(SPEED_PATTERN)] for i in range(nodes))


def speeds_text(speeds: tuple[float, ...]) -> str:
    if len(set(speeds)) == 1:
        return f"{speeds[0]:g} each"
    repeats, rest = divmod(len(speeds), len(SPEED_PATTERN))
    if speeds == speeds_for(len(speeds), True) and not rest:
        return ",".join(f"{s:g}" for s in SPEED_PATTERN) + (f" x{repeats}" if repeats > 1 else "")
    return ",".join(f"{s:g}" for s in speeds)


# --- what is sent, and when -------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One scenario's requests: when each is issued (s after the start), and where it enters."""

    times: Array
    entries: Array
    offered_rps: float | None  # None for a burst


def make_plan(
    scenario: Scenario, speeds: tuple[float, ...], requests: int, service_ms: float, seed: int
) -> Plan:
    nodes = len(speeds)
    # One stream per (seed, size, scenario): the same arrivals for every system.
    rng = np.random.default_rng([seed, nodes, list(SCENARIOS).index(scenario.name)])
    if scenario.burst:
        return Plan(np.zeros(requests), np.zeros(requests, dtype=np.int64), None)
    rate = scenario.load * sum(speeds) * 1000.0 / service_ms
    if scenario.arrivals == "poisson":
        gaps = rng.exponential(1.0 / rate, requests)
        times = np.cumsum(gaps) - gaps[0]
        others = rng.integers(1, nodes, requests) if nodes > 1 else np.zeros(requests)
        entries = np.where(rng.random(requests) < HOT_SHARE, 0, others).astype(np.int64)
    else:
        times = np.arange(requests) / rate
        entries = np.arange(requests, dtype=np.int64) % nodes
    return Plan(times, entries, rate)


def random_entries(plan: Plan, nodes: int, seed: int) -> Plan:
    """The random-push baseline: the same arrival times, each to a node drawn uniformly."""
    rng = np.random.default_rng([seed, nodes, 9999])
    return Plan(plan.times, rng.integers(0, nodes, len(plan.times)), plan.offered_rps)


# --- driving the requests ---------------------------------------------------------------


class RequestFailed(Exception):
    """One request got an error instead of an answer; ``reason`` names it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# (request index, entry node) -> the argmax of the probabilities it was answered with
Send = Callable[[int, int], Awaitable[int]]


@dataclass
class Answers:
    latencies_s: list[float] = field(default_factory=list)
    labels: dict[int, int] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    makespan_s: float = math.nan
    lag_s: float = 0.0  # how late the generator issued a request, at worst
    busy: float = math.nan  # share of the machine's CPU time in use meanwhile (every process)


def cpu_ticks() -> tuple[int, int]:
    """The machine's CPU time so far, all of it and the idle part, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields), fields[3] + fields[4]  # idle and iowait


async def drive(plan: Plan, send: Send, timeout_s: float) -> Answers:
    """Issue the plan's requests at their times, all in flight as they come; collect answers."""
    answers = Answers()
    total = len(plan.times)
    ticks, idle = cpu_ticks()
    start = time.perf_counter()
    last = start

    async def one(index: int) -> None:
        nonlocal last
        try:
            label = await send(index, int(plan.entries[index]))
        except RequestFailed as exc:
            answers.failures[exc.reason] += 1
            return
        done = time.perf_counter()
        # From the scheduled time: a generator that falls behind must not hide queueing.
        answers.latencies_s.append(done - (start + float(plan.times[index])))
        answers.labels[index] = label
        last = max(last, done)

    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tasks:
            for index in range(total):
                delay = start + float(plan.times[index]) - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif plan.offered_rps is not None:
                    answers.lag_s = max(answers.lag_s, -delay)
                tasks.create_task(one(index))
    except TimeoutError:
        missing = total - len(answers.labels) - sum(answers.failures.values())
        answers.failures[f"no answer within {timeout_s:.0f} s"] += missing
    answers.makespan_s = last - start
    ticks_after, idle_after = cpu_ticks()
    if ticks_after > ticks:
        answers.busy = 1 - (idle_after - idle) / (ticks_after - ticks)
    return answers


# --- figures --------------------------------------------------------------------------------


@dataclass
class Outcome:
    system: str
    scenario: str
    nodes: int
    speeds: tuple[float, ...]
    requests: int
    service_ms: float
    offered_rps: float | None
    makespan_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    answered: int = 0
    wrong: int = 0
    failed: int = 0
    steals: int | None = None  # None where it could not be counted
    busy: float = math.nan  # the machine's CPU in use during the scenario, 0..1
    shares: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ideal_s(self) -> float:
        return self.requests * self.service_ms / 1000.0 / sum(self.speeds)

    @property
    def efficiency(self) -> float:
        return self.ideal_s / self.makespan_s if self.makespan_s > 0 else math.nan

    @property
    def throughput(self) -> float:
        return self.answered / self.makespan_s if self.makespan_s > 0 else math.nan

    @property
    def ideal_shares(self) -> list[float]:
        return [s / sum(self.speeds) for s in self.speeds]

    @property
    def moves_per_request(self) -> float:
        return math.nan if self.steals is None else self.steals / self.requests

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row.update(
            ideal_s=self.ideal_s,
            efficiency=self.efficiency,
            throughput_rps=self.throughput,
            ideal_shares=self.ideal_shares,
            moves_per_request=self.moves_per_request,
        )
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def outcome_of(
    system: str,
    scenario: Scenario,
    speeds: tuple[float, ...],
    plan: Plan,
    answers: Answers,
    expected: Array,
    service_ms: float,
) -> Outcome:
    labels = answers.labels
    wrong = sum(1 for i, label in labels.items() if label != expected[i % len(expected)])
    result = Outcome(
        system=system,
        scenario=scenario.name,
        nodes=len(speeds),
        speeds=speeds,
        requests=len(plan.times),
        service_ms=service_ms,
        offered_rps=plan.offered_rps,
        makespan_s=answers.makespan_s,
        p50_ms=1000 * percentile(answers.latencies_s, 0.50),
        p99_ms=1000 * percentile(answers.latencies_s, 0.99),
        answered=len(labels),
        wrong=wrong,
        failed=sum(answers.failures.values()),
        busy=answers.busy,
    )
    if answers.failures:
        result.notes.append(
            "failures: " + ", ".join(f"{k} x{v}" for k, v in answers.failures.most_common())
        )
    slowest = 1000 * max(answers.latencies_s, default=0.0)
    if slowest > 1.5 * result.p99_ms + 100:  # a straggler that the makespan shows, p99 does not
        result.notes.append(f"slowest answer {slowest:.0f} ms (p99 {result.p99_ms:.0f} ms)")
    if answers.lag_s > 0.05:
        result.notes.append(f"the generator issued up to {1000 * answers.lag_s:.0f} ms late")
    return result


def scenario_timeout(speeds: tuple[float, ...], plan: Plan, service_ms: float) -> float:
    """Long enough for the worst system: every request run one after another on the slowest."""
    serial_s = len(plan.times) * service_ms / 1000.0 / min(speeds)
    return float(plan.times[-1]) + 1.5 * serial_s + 30.0


class Budget:
    """The whole run's time: nothing starts after it, and a running scenario is cut off."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def over(self) -> bool:
        return self.left() <= 0

    def bound(self, seconds: float) -> float:
        return max(1.0, min(seconds, self.left()))


# --- the mesh -------------------------------------------------------------------------------


@contextlib.contextmanager
def mesh_fleet(workdir: Path, key: bytes, flags: list[list[str]]) -> Iterator[list[int]]:
    """Start one node per entry of ``flags`` (the first is everyone's bootstrap peer).

    Yields their RPC ports; every node started is stopped on the way out.
    """
    processes: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for index, extra in enumerate(flags):
            common = ["--no-mdns", "--model", MODEL]
            if ports:
                common += ["--peer", f"127.0.0.1:{ports[0]}"]
            process, port = start_node_process(
                workdir, name=f"n{index:02d}", key=key, extra=[*common, *extra]
            )
            processes.append(process)
            ports.append(port)
        yield ports
    finally:
        # SIGTERM everyone first, so that they shut down side by side.
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in processes:
            stop_process(process)


def emulated_flags(
    speeds: tuple[float, ...], service_ms: float, steal: bool, requests: int
) -> list[list[str]]:
    flags = []
    for speed in speeds:
        extra = [
            "--slots",
            "1",
            "--emulate-speed",
            f"{speed:g}",
            "--emulate-service-ms",
            f"{service_ms:g}",
            # A burst puts every request on one connection at once.
            "--max-in-flight-per-connection",
            str(max(1024, requests + 16)),
            "--queue-cap",
            str(max(1024, requests + 16)),
            # These bursts measure balance, not admission: with no gateway,
            # the mesh must take every request however long the burst lasts.
            "--default-deadline-ms",
            "3600000",
        ]
        if not steal:
            extra.append("--no-steal")
        flags.append(extra)
    return flags


async def bounded_status(client: MeshClient) -> dict[str, Any]:
    async with asyncio.timeout(STATUS_TIMEOUT_S):
        return await client.status()


def formed(status: dict[str, Any], nodes: int, need_service: bool) -> bool:
    """This node sees the N - 1 others alive and, if asked, each one's measured service time."""
    alive = [p for p in status.get("peers", []) if p.get("state") == "alive"]
    if len(alive) < nodes - 1:
        return False
    return not need_service or all(MODEL in (p.get("service_s") or {}) for p in alive)


async def wait_formed(clients: list[MeshClient], need_service: bool) -> list[dict[str, Any]]:
    """Poll every node until the mesh is whole; the last status of each."""
    async with asyncio.timeout(FORM_TIMEOUT_S):
        while True:
            statuses = [await bounded_status(c) for c in clients]
            if all(formed(s, len(clients), need_service) for s in statuses):
                return statuses
            await asyncio.sleep(POLL_S)


def emulation_notes(statuses: list[dict[str, Any]], speeds: tuple[float, ...], ms: float) -> str:
    """Empty when every node reports the emulation it was started with."""
    wrong = []
    for index, (status, speed) in enumerate(zip(statuses, speeds, strict=True)):
        emulation = status.get("emulation") or {}
        if emulation.get("speed") != speed or emulation.get("service_ms") != ms:
            wrong.append(f"n{index:02d} reports {status.get('emulation')!r}")
    return "emulation not as asked: " + "; ".join(wrong) if wrong else ""


async def read_counters(clients: list[MeshClient]) -> Counters:
    counters = []
    for client in clients:
        reported = (await bounded_status(client)).get("counters", {})
        counters.append({k: int(reported[k]) for k in COUNTERS + EXTRA_COUNTERS if k in reported})
    return counters


def counter_deltas(before: Counters, after: Counters) -> tuple[Counters, list[str]]:
    missing = sorted({k for c in after for k in COUNTERS if k not in c})
    deltas = [
        {k: a.get(k, 0) - b.get(k, 0) for k in COUNTERS + EXTRA_COUNTERS}
        for b, a in zip(before, after, strict=True)
    ]
    return deltas, missing


def count_in(result: Outcome, deltas: Counters, missing: list[str]) -> None:
    """Shares, steals and the counters worth a note, from the nodes' counter deltas."""
    ran = [d["served_local"] + d["stolen_in"] for d in deltas]
    result.shares = [r / max(1, sum(ran)) for r in ran]
    result.steals = None if "stolen_out" in missing else sum(d["stolen_out"] for d in deltas)
    if missing:
        result.notes.append(f"status() has no counters {', '.join(missing)}")
    totals = {n: sum(d[n] for d in deltas) for n in ("requeued", "expired", *EXTRA_COUNTERS)}
    if any(totals.values()):
        result.notes.append(", ".join(f"{n} {v}" for n, v in totals.items() if v))


def mesh_sender(clients: list[MeshClient], rows: list[Array], timeout_s: float) -> Send:
    async def send(index: int, entry: int) -> int:
        try:
            outputs = await clients[entry].infer(
                MODEL, {"X": rows[index % len(rows)]}, timeout=timeout_s
            )
        except MeshError as exc:
            raise RequestFailed(type(exc).__name__) from None
        return int(np.argmax(outputs["probabilities"][0]))

    return send


@dataclass(frozen=True)
class Setup:
    """What every scenario run needs, from the command line and the data."""

    requests: int
    service_ms: float
    seed: int
    rows: list[Array]
    expected: Array
    budget: Budget


async def mesh_scenarios(
    ports: list[int],
    key: bytes,
    speeds: tuple[float, ...],
    runs: list[tuple[str, Scenario]],
    setup: Setup,
) -> list[Outcome]:
    """Run each (system, scenario) on one formed mesh, one after another."""
    results = []
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for port in ports:
            # The per-call timeout is given with every infer; this covers status().
            client = MeshClient(f"127.0.0.1:{port}", mesh_key=key, timeout=STATUS_TIMEOUT_S)
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                await stack.enter_async_context(client)
            clients.append(client)
        statuses = await wait_formed(clients, need_service=True)
        emulation = emulation_notes(statuses, speeds, setup.service_ms)
        for system, scenario in runs:
            if setup.budget.over():
                break
            plan = make_plan(scenario, speeds, setup.requests, setup.service_ms, setup.seed)
            if system == "random":
                plan = random_entries(plan, len(speeds), setup.seed)
            timeout_s = setup.budget.bound(scenario_timeout(speeds, plan, setup.service_ms))
            before = await read_counters(clients)
            answers = await drive(plan, mesh_sender(clients, setup.rows, timeout_s), timeout_s)
            await asyncio.sleep(SETTLE_S)
            deltas, missing = counter_deltas(before, await read_counters(clients))
            result = outcome_of(
                system, scenario, speeds, plan, answers, setup.expected, setup.service_ms
            )
            count_in(result, deltas, missing)
            if emulation:
                result.notes.append(emulation)
            results.append(result)
            report_progress(result)
    return results


def scan_logs(workdir: Path, keep: Path | None, label: str) -> list[str]:
    """Notes on tracebacks in the nodes' logs; copies the logs to ``keep`` if given."""
    noisy = []
    for log in sorted(workdir.glob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            noisy.append(log.stem)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"{label}-{log.name}").write_text(text)
    return [f"tracebacks in the logs of {', '.join(noisy)}"] if noisy else []


def run_mesh_group(
    steal: bool,
    speeds: tuple[float, ...],
    runs: list[tuple[str, Scenario]],
    setup: Setup,
    logs: Path | None,
) -> list[Outcome]:
    """Start one mesh, run the scenarios on it, stop it."""
    key = secrets.token_hex(32).encode()
    label = f"N{len(speeds)}-{'steal' if steal else 'nosteal'}-{speeds_text(speeds)}"
    flags = emulated_flags(speeds, setup.service_ms, steal, setup.requests)
    with tempfile.TemporaryDirectory(prefix="edgemesh-balance-") as temporary:
        workdir = Path(temporary)
        with mesh_fleet(workdir, key, flags) as ports:
            results = asyncio.run(mesh_scenarios(ports, key, speeds, runs, setup))
        notes = scan_logs(workdir, logs, label.replace(" ", ""))
    for result in results:
        result.notes.extend(notes)
    return results


# --- Dask -----------------------------------------------------------------------------------


def _dask_plugin() -> Any:
    """A worker plugin that loads the model once per worker (Dask is imported only if used)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class OrtSession(WorkerPlugin):
        def setup(self, worker: Any) -> None:
            self.session = direct_session()

    return OrtSession()


def _dask_task(row: Array, service_s: float, speeds: tuple[float, ...]) -> tuple[int, int]:
    """One emulated request on a Dask worker: the real model, padded to ``service_s / F``.

    Returns the worker's index and the argmax of the probabilities.
    """
    from distributed import get_worker

    began = time.perf_counter()
    worker = get_worker()
    plugin: Any = worker.plugins[DASK_PLUGIN]
    probabilities = plugin.session.run(["probabilities"], {"X": row})[0]
    index = int(worker.name)
    pad = service_s / speeds[index] - (time.perf_counter() - began)
    if pad > 0:
        time.sleep(pad)  # the device is busy: this worker's one thread is taken
    return index, int(np.argmax(probabilities[0]))


def _worker_name(dask_worker: Any) -> int:
    return int(dask_worker.name)


@contextlib.asynccontextmanager
async def dask_cluster(nodes: int) -> AsyncIterator[tuple[Any, list[str]]]:
    """A LocalCluster of ``nodes`` one-thread worker processes and its client; workers in order."""
    from distributed import Client, LocalCluster

    async with contextlib.AsyncExitStack() as stack:
        async with asyncio.timeout(CLUSTER_TIMEOUT_S):
            cluster = await stack.enter_async_context(
                LocalCluster(
                    n_workers=nodes,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    host="127.0.0.1",
                    asynchronous=True,
                    silence_logs=logging.ERROR,
                )
            )
            connection = Client(cluster, asynchronous=True)
            client = await stack.enter_async_context(connection)
            await client.wait_for_workers(nodes)
            await client.register_plugin(_dask_plugin(), name=DASK_PLUGIN)
            names = await client.run(_worker_name)
        # Worker i (by name) is "node i".
        yield client, [address for address, _ in sorted(names.items(), key=lambda kv: kv[1])]


def dask_sender(
    client: Any,
    workers: list[str],
    rows: list[Array],
    service_s: float,
    speeds: tuple[float, ...],
    prefix: str,
    ran_on: dict[int, int],
) -> Send:
    async def send(index: int, entry: int) -> int:
        future = client.submit(
            _dask_task,
            rows[index % len(rows)],
            service_s,
            speeds,
            key=f"{prefix}-{index}",
            workers=[workers[entry]],
            allow_other_workers=True,
        )
        try:
            worker, label = await future
        except Exception as exc:  # Dask re-raises whatever the task raised
            raise RequestFailed(type(exc).__name__) from None
        ran_on[index] = worker
        return int(label)

    return send


async def dask_warm_up(
    client: Any,
    workers: list[str],
    prefix: str,
    first: int,
    setup: Setup,
    speeds: tuple[float, ...],
) -> None:
    """One task per worker under the scenario's key prefix: Dask learns the task's duration."""
    futures = [
        client.submit(
            _dask_task,
            setup.rows[0],
            setup.service_ms / 1000.0,
            speeds,
            key=f"{prefix}-{first + i}",
            workers=[address],
            allow_other_workers=False,
        )
        for i, address in enumerate(workers)
    ]
    async with asyncio.timeout(60):
        await client.gather(futures)


async def dask_scenarios(nodes: int, scenarios: list[Scenario], setup: Setup) -> list[Outcome]:
    results = []
    async with dask_cluster(nodes) as (client, workers):
        for scenario in scenarios:
            if setup.budget.over():
                break
            speeds = speeds_for(nodes, scenario.mixed)
            prefix = f"balance_{scenario.name}"
            await dask_warm_up(client, workers, prefix, setup.requests, setup, speeds)
            plan = make_plan(scenario, speeds, setup.requests, setup.service_ms, setup.seed)
            timeout_s = setup.budget.bound(scenario_timeout(speeds, plan, setup.service_ms))
            ran_on: dict[int, int] = {}
            send = dask_sender(
                client, workers, setup.rows, setup.service_ms / 1000.0, speeds, prefix, ran_on
            )
            answers = await drive(plan, send, timeout_s)
            result = outcome_of(
                "dask", scenario, speeds, plan, answers, setup.expected, setup.service_ms
            )
            ran = Counter(ran_on.values())
            result.shares = [ran[i] / max(1, len(ran_on)) for i in range(nodes)]
            result.steals = sum(1 for i, w in ran_on.items() if w != plan.entries[i])
            results.append(result)
            report_progress(result)
    return results


# --- per-request overhead --------------------------------------------------------------------


@dataclass
class Overhead:
    nodes: int
    calls: int
    p50_us: dict[str, float] = field(default_factory=dict)
    p99_us: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, system: str, latencies_s: list[float]) -> None:
        self.p50_us[system] = 1e6 * percentile(latencies_s, 0.5)
        self.p99_us[system] = 1e6 * percentile(latencies_s, 0.99)


async def one_at_a_time(call: Callable[[int], Awaitable[object]], calls: int) -> list[float]:
    """Latencies of ``calls`` calls, each issued after the previous answered (after a warm-up)."""
    latencies = []
    async with asyncio.timeout(120):
        for index in range(OVERHEAD_WARMUP + calls):
            began = time.perf_counter()
            await call(index)
            if index >= OVERHEAD_WARMUP:
                latencies.append(time.perf_counter() - began)
    return latencies


async def mesh_overhead(ports: list[int], key: bytes, rows: list[Array], calls: int) -> list[float]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for port in ports:
            client = MeshClient(f"127.0.0.1:{port}", mesh_key=key, timeout=STATUS_TIMEOUT_S)
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                await stack.enter_async_context(client)
            clients.append(client)
        await wait_formed(clients, need_service=False)
        entry = clients[0]
        return await one_at_a_time(lambda i: entry.infer(MODEL, {"X": rows[i % len(rows)]}), calls)


async def dask_overhead(nodes: int, rows: list[Array], calls: int) -> list[float]:
    async with dask_cluster(nodes) as (client, _):

        async def call(index: int) -> object:
            # No restrictions: one task at a time, placed as Dask likes; no padding.
            return await client.submit(
                _dask_task, rows[index % len(rows)], 0.0, (1.0,) * nodes, key=f"overhead-{index}"
            )

        return await one_at_a_time(call, calls)


def direct_latencies(rows: list[Array], calls: int) -> list[float]:
    session = direct_session()
    latencies = []
    for index in range(OVERHEAD_WARMUP + calls):
        began = time.perf_counter()
        session.run(["probabilities"], {"X": rows[index % len(rows)]})
        if index >= OVERHEAD_WARMUP:
            latencies.append(time.perf_counter() - began)
    return latencies


def measure_overhead(nodes: int, rows: list[Array], with_dask: bool) -> Overhead:
    overhead = Overhead(nodes, OVERHEAD_CALLS)
    overhead.add("onnxruntime", direct_latencies(rows, OVERHEAD_CALLS))
    key = secrets.token_hex(32).encode()
    with tempfile.TemporaryDirectory(prefix="edgemesh-balance-") as temporary:
        workdir = Path(temporary)
        try:
            # Plain nodes: no emulation flags, the node's own defaults otherwise.
            with mesh_fleet(workdir, key, [[] for _ in range(nodes)]) as ports:
                overhead.add(
                    "edgemesh", asyncio.run(mesh_overhead(ports, key, rows, OVERHEAD_CALLS))
                )
        except (MeshError, TimeoutError, OSError) as exc:
            overhead.notes.append(f"edgemesh: {type(exc).__name__}: {exc}"[:300])
    if with_dask:
        try:
            overhead.add("dask", asyncio.run(dask_overhead(nodes, rows, OVERHEAD_CALLS)))
        except (TimeoutError, OSError) as exc:
            overhead.notes.append(f"dask: {type(exc).__name__}: {exc}"[:300])
    return overhead


# --- reporting ------------------------------------------------------------------------------


def report_progress(result: Outcome) -> None:
    figure = (
        f"efficiency {result.efficiency:.3f}"
        if result.offered_rps is None
        else f"{result.throughput:.0f} req/s"
    )
    print(
        f"  {result.scenario:<4} N={result.nodes:<2} {SYSTEMS[result.system]:<12} {figure}, "
        f"p99 {result.p99_ms:.0f} ms, failed {result.failed}",
        flush=True,
    )


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def print_scenario(scenario: Scenario, results: list[Outcome], service_ms: float) -> None:
    print(f"Scenario {scenario.name}: {scenario.text}")
    if scenario.burst:
        header = (
            f"{'system':<12} {'N':>3} {'speeds':<12} {'requests':>8} {'makespan s':>10} "
            f"{'ideal s':>8} {'effic.':>7} {'p50 ms':>8} {'p99 ms':>8} {'steals':>7} "
            f"{'moves/req':>9} {'wrong':>5} {'failed':>6} {'CPU %':>5}"
        )
    else:
        header = (
            f"{'system':<12} {'N':>3} {'speeds':<12} {'requests':>8} {'offered/s':>9} "
            f"{'done/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99/svc':>7} {'steals':>7} "
            f"{'moves/req':>9} {'wrong':>5} {'failed':>6} {'CPU %':>5}"
        )
    print(header)
    print("-" * len(header))
    for r in results:
        steals = "-" if r.steals is None else str(r.steals)
        latency = f"{_num(r.p50_ms, '8.1f')} {_num(r.p99_ms, '8.1f')}"
        if scenario.burst:
            figures = (
                f"{_num(r.makespan_s, '10.2f')} {r.ideal_s:8.2f} {_num(r.efficiency, '7.3f')} "
                f"{latency}"
            )
        else:
            figures = (
                f"{_num(r.offered_rps, '9.0f')} {_num(r.throughput, '8.0f')} {latency} "
                f"{_num(r.p99_ms / service_ms, '7.1f')}"
            )
        print(
            f"{SYSTEMS[r.system]:<12} {r.nodes:>3} {speeds_text(r.speeds):<12} {r.requests:>8} "
            f"{figures} {steals:>7} {_num(r.moves_per_request, '9.3f')} {r.wrong:>5} {r.failed:>6} "
            f"{_num(100 * r.busy, '5.0f')}"
        )
        print_shares(r)
        for note in r.notes:
            print(f"    note: {note}")
    print()


LEGEND = (
    "makespan: first request issued -> last answer; ideal = requests x service time / sum of "
    "speeds; effic. = ideal / makespan. Latency: scheduled issue -> answer. done/s: answers / "
    "(first issue -> last answer). p99/svc: p99 / the reference service time. steals: requests "
    "moved (edgemesh: sum of stolen_out; dask: tasks that ran off the worker they were "
    "submitted to). share/ideal: each node's part of the requests run / speed-weighted ideal. "
    "wrong: argmax differs from onnxruntime here; failed: errors and no answer in time. "
    "CPU %: the whole machine's CPU in use during the scenario (every process, this script's "
    "and the nodes' included); near 100 the figures measure the machine, not the balancing."
)


def print_shares(result: Outcome, per_line: int = 8) -> None:
    if not result.shares:
        return
    cells = [
        f"n{i} {got:.2f}/{ideal:.2f}"
        for i, (got, ideal) in enumerate(zip(result.shares, result.ideal_shares, strict=True))
    ]
    for start in range(0, len(cells), per_line):
        lead = "share/ideal:" if start == 0 else ""
        print(f"    {lead:<12} {'  '.join(cells[start : start + per_line])}")


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "MISS")


def targets(results: list[Outcome], overhead: Overhead | None) -> list[dict[str, Any]]:
    """The issue's targets beside what was measured (edgemesh with stealing)."""
    rows: list[dict[str, Any]] = []

    def add(figure: str, measured: str, target: str, ok: bool | None) -> None:
        rows.append({"figure": figure, "measured": measured, "target": target, "ok": ok})

    def find(system: str, scenario: str, nodes: int) -> Outcome | None:
        for r in results:
            if (r.system, r.scenario, r.nodes) == (system, scenario, nodes):
                return r
        return None

    def sound(r: Outcome, ok: bool) -> bool:
        # A figure from a run with failed or wrong answers passes nothing.
        return ok and r.failed == 0 and r.wrong == 0

    mesh = [r for r in results if r.system == "steal"]
    for r in mesh:
        if r.scenario == "A" and r.nodes in TARGET_EFFICIENCY:
            goal = TARGET_EFFICIENCY[r.nodes]
            add(
                f"A efficiency, N={r.nodes}",
                f"{r.efficiency:.3f}",
                f">= {goal}",
                sound(r, r.efficiency >= goal),
            )
        if r.scenario == "B":
            add(
                f"B efficiency (mixed speeds), N={r.nodes}",
                f"{r.efficiency:.3f}",
                f">= {TARGET_MIXED_EFFICIENCY}",
                sound(r, r.efficiency >= TARGET_MIXED_EFFICIENCY),
            )
        if r.scenario == "D":
            add(
                f"D steals, N={r.nodes}",
                f"{r.steals}",
                "0",
                None if r.steals is None else sound(r, r.steals == 0),
            )
        if r.scenario == "C90":
            ratio = r.p99_ms / r.service_ms
            add(
                f"C90 p99 / service time, N={r.nodes}",
                f"{ratio:.1f}x",
                f"<= {TARGET_P99_SERVICE:g}x",
                sound(r, ratio <= TARGET_P99_SERVICE),
            )
    for r in results:
        if (r.system, r.scenario) == ("nosteal", "A"):
            # One device runs the whole burst: what a call costs beyond its padding.
            per_call_ms = 1000 * r.makespan_s / r.requests
            add(
                f"A no stealing, N={r.nodes}: time per call on one device",
                f"{per_call_ms:.1f} ms",
                f"(info: pad {r.service_ms:g})",
                None,
            )
    for r in mesh:
        dask = find("dask", r.scenario, r.nodes)
        if dask is not None and SCENARIOS[r.scenario].burst:
            add(
                f"{r.scenario} efficiency vs dask, N={r.nodes}",
                f"{r.efficiency:.3f} vs {dask.efficiency:.3f}",
                "higher",
                sound(r, r.efficiency > dask.efficiency),
            )
        elif dask is not None:
            add(
                f"{r.scenario} p99 vs dask, N={r.nodes}",
                f"{r.p99_ms:.1f} vs {dask.p99_ms:.1f} ms",
                "(info)",
                None,
            )
    if overhead is not None and {"edgemesh", "dask", "onnxruntime"} <= set(overhead.p50_us):
        floor = overhead.p50_us["onnxruntime"]
        mesh_us = overhead.p50_us["edgemesh"] - floor
        dask_us = overhead.p50_us["dask"] - floor
        add(
            f"per-request overhead p50 (minus direct ORT), N={overhead.nodes}",
            f"{mesh_us:,.0f} vs {dask_us:,.0f} us",
            "lower than dask",
            mesh_us < dask_us,
        )
    return rows


def print_targets(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("  (none of the runs the targets are about were measured)")
        return
    header = f"{'figure':<52} {'measured':>22} {'target':>16}  verdict"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['figure']:<52} {row['measured']:>22} {row['target']:>16}  {_verdict(row['ok'])}"
        )


def print_overhead(overhead: Overhead) -> None:
    print(
        f"Per-request overhead: one request at a time, {overhead.calls} calls after "
        f"{OVERHEAD_WARMUP} warm-up, no emulation padding, N={overhead.nodes}"
    )
    header = f"{'system':<14} {'p50 us':>9} {'p99 us':>9} {'p50 - ORT us':>13}"
    print(header)
    print("-" * len(header))
    floor = overhead.p50_us.get("onnxruntime", math.nan)
    for system, p50 in overhead.p50_us.items():
        print(
            f"{system:<14} {p50:9.1f} {overhead.p99_us[system]:9.1f} "
            f"{_num(p50 - floor, '13.1f') if system != 'onnxruntime' else '-':>13}"
        )
    for note in overhead.notes:
        print(f"    note: {note}")
    print()


# --- main ------------------------------------------------------------------------------------


def mesh_groups(
    nodes: int, scenarios: list[Scenario], baselines: list[str]
) -> Iterator[tuple[bool, tuple[float, ...], list[tuple[str, Scenario]]]]:
    """One mesh per (stealing on or off, speeds): the runs each one serves."""
    for steal in (True, False):
        systems = ["steal"] if steal else [s for s in ("nosteal", "random") if s in baselines]
        if steal and "steal" not in baselines:
            continue
        for mixed in (False, True):
            chosen = [s for s in scenarios if s.mixed == mixed]
            runs = [(system, s) for s in chosen for system in systems]
            if runs:
                yield steal, speeds_for(nodes, mixed), runs


def load_rows() -> tuple[list[Array], Array]:
    """The held-out digits one row each, and the label direct onnxruntime gives each."""
    pixels, _, _ = load_test_digits()
    rows = [np.ascontiguousarray(pixels[i : i + 1], dtype=np.float32) for i in range(len(pixels))]
    session = direct_session()
    (probabilities,) = session.run(["probabilities"], {"X": np.concatenate(rows)})
    return rows, np.argmax(probabilities, axis=1)


def collect(args: argparse.Namespace, setup: Setup) -> tuple[list[Outcome], list[str]]:
    """Every (size, system, scenario) run the budget allows; and what was not run, and why."""
    scenarios = [SCENARIOS[name] for name in args.scenarios]
    results: list[Outcome] = []
    problems: list[str] = []
    for nodes in args.sizes:
        usable = [s for s in scenarios if not s.mixed or nodes >= len(SPEED_PATTERN)]
        problems += [f"{s.name} N={nodes}: needs N >= 4" for s in scenarios if s not in usable]
        for steal, speeds, runs in mesh_groups(nodes, usable, args.baselines):
            label = f"N={nodes} {'steal' if steal else 'nosteal'} {speeds_text(speeds)}"
            if setup.budget.over():
                problems.append(f"{label}: skipped, over the --budget")
                continue
            try:
                results += run_mesh_group(steal, speeds, runs, setup, args.logs)
            except (MeshError, TimeoutError, OSError) as exc:
                problems.append(f"{label}: {type(exc).__name__}: {exc}"[:400])
        if "dask" not in args.baselines:
            continue
        if setup.budget.over():
            problems.append(f"N={nodes} dask: skipped, over the --budget")
            continue
        try:
            results += asyncio.run(dask_scenarios(nodes, usable, setup))
        except (TimeoutError, OSError) as exc:
            problems.append(f"N={nodes} dask: {type(exc).__name__}: {exc}"[:400])
    return results, problems


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    results: list[Outcome],
    overhead: Overhead | None,
    problems: list[str],
) -> None:
    print(
        f"EMULATED DEVICES (real model, padded to {args.service_ms:g} ms / speed, one request "
        "at a time per device; two cores cannot show real parallel speed-up)."
    )
    print()
    for scenario in (SCENARIOS[name] for name in args.scenarios):
        chosen = [r for r in results if r.scenario == scenario.name]
        if chosen:
            print_scenario(scenario, chosen, args.service_ms)
    print(textwrap.fill(LEGEND, width=100, initial_indent="  ", subsequent_indent="  "))
    print()
    if overhead is not None:
        print_overhead(overhead)
    goals = targets(results, overhead)
    print("Targets (the issue's; edgemesh with stealing), measured here:")
    print_targets(goals)
    print()
    for problem in problems:
        print(f"  not run: {problem}")
    if args.json is not None:
        settings = {k: getattr(args, k) for k in ("sizes", "requests", "service_ms", "seed")}
        document = {
            "machine": info,
            "settings": settings,
            "results": [r.to_json() for r in results],
            "overhead": None if overhead is None else asdict(overhead),
            "targets": goals,
            "not_run": problems,
        }
        args.json.write_text(json.dumps(document, indent=2))


def run(args: argparse.Namespace) -> int:
    info = machine(("onnxruntime", "numpy", "msgpack", "dask", "distributed"))
    print("edgemesh balance benchmark: N real node processes on 127.0.0.1, a fresh mesh key each")
    print(f"Machine: {machine_line(info)}")
    print(
        f"EMULATED DEVICES: every node and Dask worker runs the real {MODEL} model, then pads "
        f"the call to {args.service_ms:g} ms / speed (one request at a time per device); two "
        "cores cannot show real parallel speed-up."
    )
    print(
        f"Sizes {','.join(map(str, args.sizes))}; {args.requests} requests per scenario; "
        f"seed {args.seed}; budget {args.budget:.0f} s"
    )
    print()
    if "dask" in args.baselines and importlib.util.find_spec("distributed") is None:
        print("Dask is not installed (pip install -e '.[bench]'): no dask baseline\n")
        args.baselines.remove("dask")
    rows, expected = load_rows()
    budget = Budget(args.budget)
    setup = Setup(args.requests, args.service_ms, args.seed, rows, expected, budget)
    results, problems = collect(args, setup)
    overhead = None
    if args.overhead and not budget.over():
        overhead = measure_overhead(min(args.sizes), rows, "dask" in args.baselines)
    elif args.overhead:
        problems.append("per-request overhead: skipped, over the --budget")
    print(f"\nTotal {time.monotonic() - budget.started:.0f} s\n")
    report(args, info, results, overhead, problems)
    return 0


def _names(allowed: dict[str, Any]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [x for x in names if x not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {','.join(allowed)}"
            )
        return names

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Work stealing balance across N edgemesh nodes.")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        help="node counts, comma-separated (default 2,4,8,16)",
    )
    parser.add_argument("--requests", type=int, help="requests per scenario (default 1000)")
    parser.add_argument(
        "--service-ms", type=float, default=20.0, help="reference service time, ms (default 20)"
    )
    parser.add_argument("--quick", action="store_true", help="sizes 2,4 and 300 requests")
    parser.add_argument(
        "--scenarios", type=_names(SCENARIOS), default=list(SCENARIOS), help="A,B,C70,C90,D"
    )
    parser.add_argument(
        "--baselines", type=_names(SYSTEMS), default=list(SYSTEMS), help="steal,nosteal,random,dask"
    )
    parser.add_argument("--seed", type=int, default=1, help="arrivals and random push (default 1)")
    parser.add_argument(
        "--no-overhead",
        dest="overhead",
        action="store_false",
        help="skip the one-request-at-a-time overhead comparison",
    )
    parser.add_argument(
        "--budget", type=float, default=1800.0, help="start nothing after this many s"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the nodes' logs here")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [2, 4] if args.quick else [2, 4, 8, 16]
    if args.requests is None:
        args.requests = 300 if args.quick else 1000
    if any(n < 2 or n > 64 for n in args.sizes):
        parser.error("--sizes must be between 2 and 64 nodes")
    if args.requests < 1 or args.service_ms <= 0:
        parser.error("--requests and --service-ms must be positive")
    return run_stoppable(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
