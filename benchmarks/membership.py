"""Membership at N = 4..32 real ``edgemesh node`` processes on loopback (issue 3).

Run from the repository root::

    .venv/bin/python benchmarks/membership.py                 # full run, a few minutes
    .venv/bin/python benchmarks/membership.py --quick         # sizes 4 and 8 only
    .venv/bin/python benchmarks/membership.py --sizes 4,8,16,32 --kills 3 --json out.json

For each configuration (a number of nodes N, a settings profile, a way to
find peers) it starts N ``edgemesh node`` processes on 127.0.0.1 with a fresh
mesh key, each serving only ``--model digits-small`` (to keep memory small),
with a small stagger between starts (a node start costs CPU). Then:

a. **convergence**: from the moment the last node is ready, the time until
   every node reports every other one ``alive`` (each node's ``status()`` is
   polled by its own task; a node counts when a reply arrives that shows it);
b. **gossip cost**: ``membership.gossip_bytes_sent`` and ``gossip_sent`` of
   every node, read at both ends of a fixed window, give bytes and messages
   per second per node, bytes per message, and with CPU time and RSS read
   from ``/proc`` the CPU share and memory of a node;
c. **failure detection**: SIGKILL one node (never the bootstrap node), time
   until every survivor reports it ``dead``; restart it under the same name,
   time until everybody sees it ``alive`` again with a higher incarnation;
   repeated ``--kills`` times, a different node each time.

Profiles: ``fast`` is ``--gossip-interval 0.1 --suspect-after 0.5
--dead-after 0.3``; ``default`` passes no timing flags (0.2 / 0.8 / 0.6).
Discovery: ``mdns`` binds mDNS to 127.0.0.1 (``--interface 127.0.0.1``),
no bootstrap peers; ``peer`` is ``--no-mdns`` with every node given the first
node as its one ``--peer``. mDNS runs only up to ``--mdns-max`` nodes.

Times are upper bounds within one poll period (the table says which). The
number of kills per configuration is small, so the table gives min / median /
max, not a p99, which a handful of samples cannot estimate. Also counted:
"false" suspicions, a live node seen ``suspect`` or ``dead`` by anyone.

Every configuration is bounded in time, the whole run by ``--budget``, and
every process this script starts is stopped in a ``finally`` block, on
Ctrl-C too. Nothing leaves loopback. It asserts nothing: a benchmark is not
a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import machine, machine_line
from stoppable import run_stoppable

from mesh.demo.processes import node_command
from mesh.errors import MeshError
from mesh.sdk.client import MeshClient

MODEL = "digits-small"
PROFILES: dict[str, list[str]] = {
    "fast": ["--gossip-interval", "0.1", "--suspect-after", "0.5", "--dead-after", "0.3"],
    "default": [],
}
GOSSIP_INTERVAL_S = {"fast": 0.1, "default": 0.2}
# The targets.
CONVERGE_TARGET_S = {"fast": 1.0, "default": 3.0}
DEAD_TARGET_S = 1.5  # at defaults, at p99

STAGGER_S = 0.2  # between node starts
READY_TIMEOUT_S = 90.0
CONVERGE_TIMEOUT_S = 20.0
DEAD_TIMEOUT_S = 15.0
REJOIN_TIMEOUT_S = 20.0
CONFIG_TIMEOUT_S = 180.0
EXTRAPOLATE_N = (100, 300, 1000)
# The scalable design the summary estimates: gossip to K random peers per
# round, carrying at most D changed entries (digest deltas), plus one full
# digest to one random peer every ANTI_ENTROPY_S (anti-entropy).
SUBSET_K = 3
DELTA_ENTRIES = 8
ANTI_ENTROPY_S = 10.0


@dataclass(frozen=True)
class Config:
    nodes: int
    profile: str
    discovery: str

    @property
    def label(self) -> str:
        return f"N={self.nodes} {self.profile} {self.discovery}"

    @property
    def poll_s(self) -> float:
        # Each node's status is polled by its own task; the poller shares two
        # cores with the nodes, so it polls less often when there are many.
        return 0.05 if self.nodes <= 16 else 0.1


@dataclass
class Result:
    config: Config
    poll_s: float
    start_s: float = 0.0  # first start to last ready
    rss_mb: float = 0.0
    converge_s: float | None = None
    gossip_bytes_s: float = 0.0  # per node
    gossip_msgs_s: float = 0.0  # per node
    bytes_per_msg: float = 0.0
    cpu_share: float = 0.0  # of one core, per node, during the gossip window
    dead_s: list[float] = field(default_factory=list)
    rejoin_s: list[float] = field(default_factory=list)
    false_suspicions: set[tuple[str, str]] = field(default_factory=set)
    linked: float = 0.0  # share of alive (observer, peer) pairs with a direct link
    poller_cpu_share: float = 0.0  # this script's own CPU while it polls, of one core
    notes: list[str] = field(default_factory=list)


# --- processes --------------------------------------------------------------------------


@dataclass
class NodeProcess:
    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path
    port: int = 0
    ready_at: float = 0.0


class Fleet:
    """The node processes of one configuration; :meth:`stop_all` stops every one."""

    def __init__(self, workdir: Path, key_file: Path, config: Config) -> None:
        self.workdir = workdir
        self.key_file = key_file
        self.config = config
        self.nodes: dict[str, NodeProcess] = {}
        self.names = [f"n{i:02d}" for i in range(config.nodes)]
        self.bootstrap_port = 0

    def launch(self, name: str) -> NodeProcess:
        """Start one node process (it is tracked before this returns)."""
        ready = self.workdir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        log = self.workdir / f"{name}.log"
        command = node_command(
            name,
            ready,
            [
                "--model",
                MODEL,
                "--mesh-key-file",
                str(self.key_file),
                *PROFILES[self.config.profile],
            ],
        )
        if self.config.discovery == "mdns":
            command += ["--interface", "127.0.0.1"]  # mDNS on loopback only
        else:
            command.append("--no-mdns")
            if self.bootstrap_port:
                command += ["--peer", f"127.0.0.1:{self.bootstrap_port}"]
        with log.open("ab") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        node = NodeProcess(name, process, ready, log)
        self.nodes[name] = node
        return node

    def _check_ready(self, waiting: set[str]) -> None:
        """One look at the ready files; takes the ready ones out of ``waiting``."""
        for name in sorted(waiting):
            node = self.nodes[name]
            if node.ready_file.exists():
                node.port = int(json.loads(node.ready_file.read_text())["rpc_port"])
                node.ready_at = time.monotonic()
                waiting.discard(name)
            elif node.process.poll() is not None:
                tail = node.log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {name} exited with {node.process.returncode}:\n{tail}")

    def wait_ready(self, names: list[str], timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(names)
        while True:
            self._check_ready(waiting)
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes {sorted(waiting)} not ready within {timeout:.0f} s")
            time.sleep(0.02)

    async def wait_ready_async(self, name: str, timeout: float = READY_TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            waiting = {name}
            while True:
                self._check_ready(waiting)
                if not waiting:
                    return
                await asyncio.sleep(0.02)

    def start_all(self) -> float:
        """Start every node, the first (the bootstrap) alone; returns when the last was ready."""
        first = self.names[0]
        self.launch(first)
        self.wait_ready([first])
        self.bootstrap_port = self.nodes[first].port
        for name in self.names[1:]:
            self.launch(name)
            time.sleep(STAGGER_S)
        self.wait_ready(self.names[1:])
        return max(node.ready_at for node in self.nodes.values())

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM all, then SIGKILL whatever has not exited by the deadline."""
        for node in self.nodes.values():
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- watching -----------------------------------------------------------------------------

Peers = dict[str, dict[str, Any]]
Check = Callable[[str, Peers], bool]


class Watcher:
    """A status client per node, and polls of all of them at once."""

    def __init__(self, key: bytes, fleet: Fleet, result: Result) -> None:
        self.key = key
        self.fleet = fleet
        self.result = result
        self.clients: dict[str, MeshClient] = {}
        self.polled_cpu_s = 0.0
        self.polled_wall_s = 0.0

    async def connect(self, name: str) -> None:
        await self.drop(name)
        client = MeshClient(
            f"127.0.0.1:{self.fleet.nodes[name].port}",
            mesh_key=self.key,
            timeout=10,
            connect_timeout=10,
        )
        await client.connect()
        self.clients[name] = client

    async def drop(self, name: str) -> None:
        client = self.clients.pop(name, None)
        if client is not None:
            with contextlib.suppress(MeshError, OSError):
                await client.aclose()

    async def close(self) -> None:
        for name in list(self.clients):
            await self.drop(name)

    async def peers(self, name: str) -> Peers:
        status = await self.clients[name].status()
        return {p["name"]: p for p in status["peers"]}

    def note_false(self, observer: str, peers: Peers, live: set[str]) -> None:
        for name, peer in peers.items():
            if name in live and name != observer and peer["state"] != "alive":
                self.result.false_suspicions.add((observer, name))

    async def watch(
        self, observers: list[str], check: Check, timeout: float, live: set[str]
    ) -> dict[str, float]:
        """Poll each observer until ``check`` holds for it; when it first did, by observer."""
        found: dict[str, float] = {}
        poll_s = self.result.poll_s

        async def one(name: str) -> None:
            while True:
                try:
                    peers = await self.peers(name)
                except MeshError:
                    await asyncio.sleep(poll_s)
                    continue
                now = time.monotonic()
                self.note_false(name, peers, live)
                if check(name, peers):
                    found[name] = now
                    return
                await asyncio.sleep(poll_s)

        cpu, wall = time.process_time(), time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), asyncio.TaskGroup() as tasks:
                for name in observers:
                    tasks.create_task(one(name))
        self.polled_cpu_s += time.process_time() - cpu
        self.polled_wall_s += time.monotonic() - wall
        return found


def sees_all_alive(names: list[str], newer: dict[str, int] | None = None) -> Check:
    """The observer sees every other name alive (and, for ``newer``, a higher incarnation)."""

    def check(observer: str, peers: Peers) -> bool:
        for name in names:
            if name == observer:
                continue
            peer = peers.get(name)
            if peer is None or peer["state"] != "alive":
                return False
            if newer and name in newer and peer["incarnation"] <= newer[name]:
                return False
        return True

    return check


def sees_dead(victim: str) -> Check:
    def check(_: str, peers: Peers) -> bool:
        peer = peers.get(victim)
        return peer is not None and peer["state"] == "dead"

    return check


# --- one configuration ----------------------------------------------------------------------


async def measure(
    fleet: Fleet, key: bytes, result: Result, last_ready: float, kills: int, window_s: float
) -> None:
    names = fleet.names
    live = set(names)
    watcher = Watcher(key, fleet, result)
    try:
        for name in names:
            await watcher.connect(name)

        # (a) convergence, from the moment the last node was ready.
        found = await watcher.watch(names, sees_all_alive(names), CONVERGE_TIMEOUT_S, set())
        converged = len(found) == len(names)
        if converged:
            result.converge_s = max(found.values()) - last_ready
        else:
            views = {n: await watcher.peers(n) for n in names}
            states = Counter(p["state"] for peers in views.values() for p in peers.values())
            pairs = len(names) * (len(names) - 1)
            result.notes.append(
                f"not converged within {CONVERGE_TIMEOUT_S:.0f} s: of {pairs}"
                f" (observer, peer) pairs, {states['alive']} alive, {states['suspect']} suspect, "
                f"{states['dead']} dead, the rest unknown; gossip measured anyway, no kills"
            )
        result.false_suspicions.clear()  # only count after the mesh formed

        # (b) gossip bytes and messages per second per node, over a fixed window.
        links = [0, 0]

        async def snapshot() -> dict[str, tuple[float, int, int, float]]:
            stats = {}
            for name in names:
                status = await watcher.clients[name].status()
                alive = [p for p in status["peers"] if p["state"] == "alive"]
                links[0] += sum(1 for p in alive if p["connected"])
                links[1] += len(alive)
                watcher.note_false(name, {p["name"]: p for p in status["peers"]}, live)
                membership = status["membership"]
                stats[name] = (
                    time.monotonic(),
                    int(membership["gossip_bytes_sent"]),
                    int(membership["gossip_sent"]),
                    cpu_seconds(fleet.nodes[name].process.pid),
                )
            return stats

        before = await snapshot()
        await asyncio.sleep(window_s)
        after = await snapshot()
        rates = [
            (
                (after[n][1] - before[n][1]) / (after[n][0] - before[n][0]),
                (after[n][2] - before[n][2]) / (after[n][0] - before[n][0]),
                (after[n][3] - before[n][3]) / (after[n][0] - before[n][0]),
            )
            for n in names
        ]
        result.gossip_bytes_s = statistics.fmean(r[0] for r in rates)
        result.gossip_msgs_s = statistics.fmean(r[1] for r in rates)
        result.cpu_share = statistics.fmean(r[2] for r in rates)
        result.linked = links[0] / max(1, links[1])
        if not converged:
            result.false_suspicions.clear()  # meaningless before the mesh formed
        sent = sum(after[n][2] - before[n][2] for n in names)
        result.bytes_per_msg = sum(after[n][1] - before[n][1] for n in names) / max(1, sent)
        result.rss_mb = statistics.fmean(rss_mb(fleet.nodes[n].process.pid) for n in names)

        # (c) SIGKILL a different node each time; restart it under the same name.
        for victim in names[1 : 1 + kills] if converged else []:
            survivors = [n for n in names if n != victim]
            incarnation = (await watcher.peers(names[0]))[victim]["incarnation"]
            await watcher.drop(victim)
            killed_at = time.monotonic()
            fleet.nodes[victim].process.kill()
            live.discard(victim)
            found = await watcher.watch(survivors, sees_dead(victim), DEAD_TIMEOUT_S, live)
            fleet.nodes[victim].process.wait()
            if len(found) < len(survivors):
                result.notes.append(f"{victim} not dead everywhere within {DEAD_TIMEOUT_S:.0f} s")
                return
            result.dead_s.append(max(found.values()) - killed_at)

            fleet.launch(victim)
            await fleet.wait_ready_async(victim)
            ready_at = fleet.nodes[victim].ready_at
            await watcher.connect(victim)
            live.add(victim)
            check = sees_all_alive(names, newer={victim: incarnation})
            found = await watcher.watch(names, check, REJOIN_TIMEOUT_S, live - {victim})
            if len(found) < len(names):
                result.notes.append(f"{victim} did not rejoin within {REJOIN_TIMEOUT_S:.0f} s")
                return
            result.rejoin_s.append(max(found.values()) - ready_at)
    finally:
        result.poller_cpu_share = watcher.polled_cpu_s / max(1e-9, watcher.polled_wall_s)
        await watcher.close()


def run_config(config: Config, kills: int, window_s: float, logs: Path | None) -> Result:
    result = Result(config=config, poll_s=config.poll_s)
    key = secrets.token_hex(32).encode()  # a fresh mesh key: no other mesh joins
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{config.label.replace(' ', '-')}-", dir=logs) as tmp:
        workdir = Path(tmp)
        key_file = workdir / "mesh.key"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        fleet = Fleet(workdir, key_file, config)
        try:
            first_start = time.monotonic()
            last_ready = fleet.start_all()
            result.start_s = last_ready - first_start
            asyncio.run(_bounded(measure(fleet, key, result, last_ready, kills, window_s)))
        except TimeoutError as exc:
            result.notes.append(str(exc) or "timed out")
        except (RuntimeError, MeshError) as exc:
            result.notes.append(f"failed: {exc}"[:300])
        finally:
            fleet.stop_all()
            if logs is not None:  # keep the logs: copy them out of the temporary folder
                for log in workdir.glob("*.log"):
                    (logs / f"{workdir.name}-{log.name}").write_bytes(log.read_bytes())
        crashed = [n for n, node in fleet.nodes.items() if node.process.returncode not in (0, -9)]
        if crashed:
            result.notes.append(f"nodes exited with an error: {crashed}")
        tracebacks = [n for n in fleet.names if "Traceback" in _read(workdir / f"{n}.log")]
        if tracebacks:
            result.notes.append(f"tracebacks in the logs of {tracebacks}")
    return result


async def _bounded(work: Coroutine[Any, Any, None]) -> None:
    try:
        async with asyncio.timeout(CONFIG_TIMEOUT_S):
            await work
    except TimeoutError:
        raise TimeoutError(f"configuration cut off after {CONFIG_TIMEOUT_S:.0f} s") from None


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# --- reporting ------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}"


def print_table(results: list[Result]) -> None:
    header = (
        f"{'N':>3} {'profile':<8} {'disc':<5} {'start s':>7} {'RSS MB':>6} "
        f"{'converge s':>10} {'dead s min/med/max':>18} {'rejoin s min/med/max':>20} "
        f"{'B/s/node':>9} {'msg/s':>6} {'B/msg':>6} {'B/s/peer':>8} {'CPU %':>6} "
        f"{'linked':>6} {'false':>5} {'poll s':>6} {'poller %':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        c = r.config
        converge = "-" if r.converge_s is None else f"{r.converge_s:.2f}"
        per_peer = r.gossip_bytes_s / max(1, c.nodes - 1)
        print(
            f"{c.nodes:>3} {c.profile:<8} {c.discovery:<5} {r.start_s:7.1f} {r.rss_mb:6.0f} "
            f"{converge:>10} {_spread(r.dead_s):>18} {_spread(r.rejoin_s):>20} "
            f"{r.gossip_bytes_s:9,.0f} {r.gossip_msgs_s:6.0f} {r.bytes_per_msg:6.0f} "
            f"{per_peer:8,.0f} {100 * r.cpu_share:6.1f} {100 * r.linked:5.0f}% "
            f"{len(r.false_suspicions):>5} "
            f"{r.poll_s:6.2f} {100 * r.poller_cpu_share:8.0f}"
        )
        for note in r.notes:
            print(f"    note ({c.label}): {note}")


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if len(set(xs)) < 2:
        return (ys[0] if ys else 0.0), 0.0
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def print_summary(results: list[Result]) -> dict[str, Any]:
    measured = [r for r in results if r.gossip_msgs_s > 0]
    summary: dict[str, Any] = {}
    print()
    print("Targets (the issue's), measured here:")
    for profile in PROFILES:
        rows = [r for r in results if r.config.profile == profile]
        if not rows:
            continue
        limit = CONVERGE_TARGET_S[profile]
        for r in rows:
            if r.converge_s is None:
                verdict = "MISS (did not converge)"
            else:
                verdict = "PASS" if r.converge_s <= limit else "MISS"
            print(
                f"  {r.config.label:<22} everyone sees everyone within {limit:.0f} s: "
                f"{'-' if r.converge_s is None else f'{r.converge_s:.2f} s'}  {verdict}"
            )
    dead_default = [x for r in results if r.config.profile == "default" for x in r.dead_s]
    if dead_default:
        worst = max(dead_default)
        print(
            f"  default profile, killed node dead within {DEAD_TARGET_S} s at p99: "
            f"{len(dead_default)} kills, max {worst:.2f} s  "
            f"{'PASS' if worst <= DEAD_TARGET_S else 'MISS'} (max of the samples, not a p99)"
        )
    if len({r.config.nodes for r in measured}) < 2:
        print("(one size only: no growth fit, no extrapolation)")
        return summary

    # Bytes per message = a + b * (N - 1): a fixed part (own identity, load,
    # framing) and b per digest entry. One fit over all rows: message size
    # does not depend on the timing profile.
    a, b = fit_line([(r.config.nodes - 1, r.bytes_per_msg) for r in measured])
    summary["bytes_per_msg_fixed"] = a
    summary["bytes_per_digest_entry"] = b
    print()
    print(f"Gossip message size fit: {a:.0f} B + {b:.1f} B per digest entry (N - 1 entries)")
    for profile in PROFILES:
        rows = sorted(
            (r for r in measured if r.config.profile == profile and r.config.discovery == "peer"),
            key=lambda r: r.config.nodes,
        )
        if len(rows) >= 2:
            ratios = ", ".join(
                f"N {p.config.nodes}->{q.config.nodes}: x{q.gossip_bytes_s / p.gossip_bytes_s:.1f}"
                for p, q in itertools.pairwise(rows)
            )
            print(f"  {profile}: bytes/s per node grows {ratios} (N^2 would be x4 per doubling)")
    # A node's CPU (us per s) = base + m * messages/s + e * messages/s * (N - 1):
    # an idle cost, a cost per message and a cost per digest entry (each node
    # receives as many gossip messages as it sends; m and e cover both).
    points = [
        (r.gossip_msgs_s, r.gossip_msgs_s * (r.config.nodes - 1), 1e6 * r.cpu_share)
        for r in measured
    ]
    design = np.array([[1.0, m, e] for m, e, _ in points])
    cpu_fit, *_ = np.linalg.lstsq(design, np.array([y for *_, y in points]), rcond=None)
    base, per_msg, per_entry = (float(x) for x in cpu_fit)
    cpu_ok = len({(m, e) for m, e, _ in points}) >= 3 and per_msg >= 0 and per_entry >= 0
    summary["cpu_fit_us"] = {"idle_per_s": base, "per_msg": per_msg, "per_entry": per_entry}
    print(
        f"CPU fit: {base:,.0f} us/s idle + {per_msg:.0f} us per gossip message + "
        f"{per_entry:.1f} us per digest entry (sent + received)"
        + ("" if cpu_ok else "  (too few or inconsistent points: CPU not extrapolated)")
    )

    def cpu_cores(messages_s: float, entries_s: float) -> float:
        return (per_msg * messages_s + per_entry * entries_s) / 1e6 if cpu_ok else math.nan

    print()
    print(
        f"Extrapolated per node (full mesh as built, vs gossip to k={SUBSET_K} random peers with "
        f"<= {DELTA_ENTRIES} changed entries + a full digest to one peer every "
        f"{ANTI_ENTROPY_S:.0f} s):"
    )
    print(
        f"  {'N':>5} {'interval':>8} {'full KB/s':>10} {'full CPU cores':>14} "
        f"{'TCP conns':>9} {'subset KB/s':>11} {'subset CPU':>10}"
    )
    extrapolated = []
    for n in EXTRAPOLATE_N:
        for profile in ("default", "fast"):
            interval = GOSSIP_INTERVAL_S[profile]
            messages = (n - 1) / interval
            full = messages * (a + b * (n - 1))
            full_cpu = cpu_cores(messages, messages * (n - 1))
            subset_msgs = SUBSET_K / interval
            subset = subset_msgs * (a + b * DELTA_ENTRIES) + (a + b * (n - 1)) / ANTI_ENTROPY_S
            subset_cpu = cpu_cores(
                subset_msgs + 1 / ANTI_ENTROPY_S,
                subset_msgs * DELTA_ENTRIES + (n - 1) / ANTI_ENTROPY_S,
            )
            extrapolated.append(
                {
                    "n": n,
                    "interval_s": interval,
                    "full_bytes_s": full,
                    "full_cpu_cores": full_cpu,
                    "subset_bytes_s": subset,
                    "subset_cpu_cores": subset_cpu,
                }
            )
            print(
                f"  {n:>5} {interval:>7.1f}s {full / 1000:>10,.0f} {full_cpu:>14.2f} "
                f"{2 * (n - 1):>9} {subset / 1000:>11.1f} {subset_cpu:>10.3f}"
            )
    summary["extrapolated"] = extrapolated
    return summary


# --- main ------------------------------------------------------------------------------------


def configurations(sizes: list[int], profiles: list[str], mdns_max: int) -> Iterator[Config]:
    for profile in profiles:
        for nodes in sizes:
            if nodes <= mdns_max:
                yield Config(nodes, profile, "mdns")
            yield Config(nodes, profile, "peer")


def run(args: argparse.Namespace) -> int:
    info = machine(("onnxruntime", "msgpack", "zeroconf"))
    print("edgemesh membership benchmark: real node processes on 127.0.0.1, a fresh mesh key each")
    print(f"Machine: {machine_line(info)}")
    print(
        f"Nodes serve only --model {MODEL}; started {STAGGER_S} s apart; timings from the "
        f"last node ready. {args.kills} kills per configuration; gossip window {args.window} s."
    )
    profiles_text = "; ".join(
        f"{k}: {' '.join(v) or '(no timing flags)'}" for k, v in PROFILES.items()
    )
    print(f"Profiles: {profiles_text}")
    print()
    started = time.monotonic()
    results: list[Result] = []
    skipped: list[str] = []
    for config in configurations(args.sizes, args.profiles, args.mdns_max):
        if time.monotonic() - started > args.budget:
            skipped.append(config.label)
            continue
        began = time.monotonic()
        result = run_config(config, args.kills, args.window, args.logs)
        results.append(result)
        converge = "-" if result.converge_s is None else f"{result.converge_s:.2f} s"
        print(
            f"  {config.label:<22} converge {converge}, dead {_spread(result.dead_s)} s, "
            f"{result.gossip_bytes_s:,.0f} B/s/node  ({time.monotonic() - began:.0f} s)",
            flush=True,
        )
    print()
    print(f"Total {time.monotonic() - started:.0f} s")
    print()
    print_table(results)
    print(
        "  converge: last node ready -> every node reports every other alive. dead: SIGKILL -> "
        "every survivor reports it dead. rejoin: restarted node ready -> every node reports it "
        "alive with a higher incarnation. Times are upper bounds within one poll period. "
        "B/s/node: gossip_bytes_sent per second per node (gossip and link handshakes). "
        "CPU %: one node's share of one core during the window. linked: share of alive "
        "(observer, peer) pairs with a direct link (the rest are alive on hearsay). "
        "false: (observer, peer) pairs where a live node was seen suspect or dead. "
        "poller %: this script's CPU share of one core while it polled."
    )
    if skipped:
        print(f"  skipped (over the --budget of {args.budget:.0f} s): {', '.join(skipped)}")
    summary = print_summary(results)
    if args.json is not None:
        rows = []
        for r in results:
            row = asdict(r)
            row["false_suspicions"] = sorted(r.false_suspicions)
            rows.append(row)
        args.json.write_text(
            json.dumps({"machine": info, "results": rows, "summary": summary}, indent=2)
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Membership of N edgemesh node processes.")
    parser.add_argument("--quick", action="store_true", help="sizes 4 and 8 only")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        help="node counts, comma-separated (default 4,8,16,32)",
    )
    parser.add_argument(
        "--profiles",
        type=lambda text: text.split(","),
        default=["fast", "default"],
        help="fast,default (default: both)",
    )
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per configuration")
    parser.add_argument("--window", type=float, default=3.0, help="gossip window, seconds")
    parser.add_argument(
        "--mdns-max", type=int, default=8, help="also run mDNS discovery up to this many nodes"
    )
    parser.add_argument(
        "--budget", type=float, default=420.0, help="start no configuration after this many s"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the nodes' logs here")
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [4, 8] if args.quick else [4, 8, 16, 32]
    if any(n < 2 or n > 64 for n in args.sizes):
        parser.error("--sizes must be between 2 and 64 nodes")
    if any(p not in PROFILES for p in args.profiles):
        parser.error(f"--profiles must be among {', '.join(PROFILES)}")
    args.kills = max(0, min(args.kills, min(args.sizes) - 1))
    return run_stoppable(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
