"""Membership with real ``edgemesh node`` processes: form a mesh, SIGKILL one, restart it.

Four processes on 127.0.0.1, found two ways:

* ``mdns``: mDNS bound to 127.0.0.1 (``--interface 127.0.0.1``, the
  default of :func:`start_node_process`), no bootstrap peers at all. It has
  been reliable between processes on loopback here, so it is used as is.
* ``chain``: ``--no-mdns``, and node i is given only node i-1 as ``--peer``,
  so the mesh forms only if peers pass on what they know.

The node settings are the product defaults (gossip every 0.2 s, suspect
after 0.8 s, dead 0.6 s later). Timings are measured and printed, but only a
generous bound is asserted: these machines are shared and noisy.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh import Client
from mesh.demo.processes import start_node_process, stop_process

pytestmark = pytest.mark.system

EDGEMESH = str(Path(sys.executable).parent / "edgemesh")
NODES = 4
# Generous bounds: behaviour, not speed. At defaults a killed node is
# declared dead in well under a second on an idle machine.
JOIN_WITHIN_S = 15.0
DEAD_WITHIN_S = 5.0
POLL_S = 0.05

Views = dict[str, dict[str, dict[str, Any]]]


@dataclass
class Mesh:
    """Node processes of one test, their ports and a status client for each."""

    workdir: Path
    key: bytes
    mode: str
    names: list[str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    clients: dict[str, Client] = field(default_factory=dict)

    def extra(self, index: int) -> list[str]:
        """Flags for node ``index``: one small model; mDNS, or a bootstrap chain."""
        flags = ["--model", "digits-small"]
        if self.mode == "chain":
            flags.append("--no-mdns")
            if index > 0:
                flags += ["--peer", f"127.0.0.1:{self.ports[self.names[index - 1]]}"]
        return flags

    def start(self, index: int) -> None:
        name = self.names[index]
        # start_node_process reads the port from this file as soon as it
        # exists: a restart must not find the killed process's file.
        (self.workdir / f"{name}.ready.json").unlink(missing_ok=True)
        process, port = start_node_process(
            self.workdir, name=name, key=self.key, extra=self.extra(index)
        )
        self.processes[name] = process
        self.ports[name] = port
        self.clients[name] = Client(f"127.0.0.1:{port}", mesh_key=self.key, timeout=10)

    def drop_client(self, name: str) -> None:
        client = self.clients.pop(name, None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def views(self, observers: list[str]) -> Views:
        """Each observer's peers, by name."""
        return {
            observer: {p["name"]: p for p in self.clients[observer].status()["peers"]}
            for observer in observers
        }

    def wait_for(
        self, what: str, observers: list[str], done: Callable[[Views], bool], within: float
    ) -> tuple[float, Views]:
        """Poll the observers' status until ``done``; the time it took and the last views."""
        started = time.monotonic()
        deadline = started + within
        while True:
            views = self.views(observers)
            if done(views):
                return time.monotonic() - started, views
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {within:.0f} s\n{self.describe(views)}")
            time.sleep(POLL_S)

    def describe(self, views: Views) -> str:
        lines = [
            f"{observer} sees "
            + ", ".join(f"{n}={p['state']}#{p['incarnation']}" for n, p in sorted(peers.items()))
            for observer, peers in views.items()
        ]
        for name in self.names:
            log = self.workdir / f"{name}.log"
            if log.exists():
                lines.append(f"--- {name}.log (tail)\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(lines)

    def close(self) -> None:
        for name in list(self.clients):
            self.drop_client(name)
        for process in self.processes.values():
            stop_process(process)


@pytest.fixture
def make_mesh(tmp_path: Path) -> Iterator[Callable[[str], Mesh]]:
    made: list[Mesh] = []

    def make(mode: str) -> Mesh:
        # Unique names and a fresh key: another test run on this machine,
        # also on loopback mDNS, never joins this mesh.
        tag = uuid.uuid4().hex[:6]
        mesh = Mesh(
            workdir=tmp_path,
            key=secrets.token_hex(32).encode(),
            mode=mode,
            names=[f"m{i}-{tag}" for i in range(NODES)],
        )
        made.append(mesh)
        return mesh

    try:
        yield make
    finally:
        for mesh in made:
            mesh.close()


def all_alive(expected: dict[str, list[str]]) -> Callable[[Views], bool]:
    """Each observer sees exactly its expected peers, every one alive."""

    def done(views: Views) -> bool:
        return all(
            {n for n, p in views[o].items() if p["state"] == "alive"} == set(peers)
            for o, peers in expected.items()
        )

    return done


def run_status_cli(port: int, key_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEMESH, "status", "--node", f"127.0.0.1:{port}", "--mesh-key-file", str(key_file)],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ),
        check=False,
    )


@pytest.mark.parametrize("mode", ["mdns", "chain"])
def test_four_processes_detect_a_kill_and_a_rejoin(
    make_mesh: Callable[[str], Mesh], mode: str
) -> None:
    mesh = make_mesh(mode)
    names = mesh.names
    for index in range(NODES):
        mesh.start(index)

    # 1. Every node sees the other three alive.
    others = {n: [m for m in names if m != n] for n in names}
    joined_s, views = mesh.wait_for("mesh forms", names, all_alive(others), JOIN_WITHIN_S)
    victim = names[2]  # in the chain, a middle link: the others must not depend on it
    old_incarnation = views[names[0]][victim]["incarnation"]
    assert all(views[o][victim]["incarnation"] == old_incarnation for o in others[victim])
    assert all(views[o][victim]["models"] == ["digits-small"] for o in others[victim])
    print(f"\n[{mode}] all {NODES} see each other alive {joined_s:.2f} s after the last was ready")

    # 2. SIGKILL one: the other three declare it dead.
    survivors = others[victim]
    mesh.drop_client(victim)
    mesh.processes[victim].kill()
    mesh.processes[victim].wait(timeout=10)

    def victim_dead(views: Views) -> bool:
        return all(views[o][victim]["state"] == "dead" for o in survivors)

    dead_s, views = mesh.wait_for("killed node declared dead", survivors, victim_dead, 10)
    print(f"[{mode}] {victim} dead on all survivors {dead_s:.2f} s after SIGKILL")
    assert dead_s < DEAD_WITHIN_S, mesh.describe(views)
    # The survivors still see each other alive.
    for observer in survivors:
        alive = {n for n, p in views[observer].items() if p["state"] == "alive"}
        assert alive == set(survivors) - {observer}, mesh.describe(views)

    # The CLI shows the peers table with names and states.
    shown = run_status_cli(mesh.ports[survivors[0]], mesh.workdir / f"{survivors[0]}.key")
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("\n\n", 1)[1]
    header = table.splitlines()[0].split()
    assert header[:3] == ["peer", "state", "address"], table
    # The table's rows, not the legend under it.
    lines = table.splitlines()[2:]
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.strip() and not line.startswith("stolen out:")
    }
    assert set(rows) == set(names) - {survivors[0]}, table
    assert rows[victim][1] == "dead", table
    for name in survivors[1:]:
        assert rows[name][1] == "alive", table
        assert rows[name][2].startswith("127.0.0.1:"), table

    # 3. Restart it with the same name (a new port): the same member, a new incarnation.
    mesh.start(names.index(victim))
    rejoined_s, views = mesh.wait_for("restarted node rejoins", names, all_alive(others), 15)
    print(f"[{mode}] {victim} back and seen alive by all {rejoined_s:.2f} s after it was ready")
    for observer in survivors:
        seen = views[observer][victim]
        assert seen["incarnation"] > old_incarnation, mesh.describe(views)
        assert seen["address"] == f"127.0.0.1:{mesh.ports[victim]}", mesh.describe(views)
    # No ghosts: nobody lists a member that is not one of the four.
    assert all(set(peers) == set(others[o]) for o, peers in views.items()), mesh.describe(views)

    for name in names:
        assert mesh.processes[name].poll() is None, mesh.describe(views)
    mesh.close()
    for name in names:
        assert mesh.processes[name].returncode == 0, (mesh.workdir / f"{name}.log").read_text()
        assert "Traceback" not in (mesh.workdir / f"{name}.log").read_text()
