"""Three hosts on a bridge (network namespaces): real mDNS, a pulled cable, a rejoin.

Each host is a network namespace with its own address on a private bridge
(TESTING.md, "Several hosts on one machine"). One ``edgemesh node`` runs in
each, started as a user would, with mDNS bound to the namespace's interface
and no ``--peer``: they must find each other by multicast alone. Then h3's
cable is pulled (its bridge-side veth set down): h1 and h2 must declare it
dead; plugged back in, it must be alive again everywhere.

Skips where namespaces cannot be made (not root, no ``ip``, no capability).
Traffic stays inside the namespaces and the bridge, which has no address.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import KEY
from tests.helpers.netns import NetnsLab, multicast_lab, unavailable_reason

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

PORT = 7700
MODEL = "digits-small"
# Bounds, not targets: generous so a loaded machine does not fail the test.
READY_S = 30.0
FORM_S = 20.0
DEAD_S = 10.0
REJOIN_S = 20.0
HOLD_S = 3.0  # how long the cable stays out after h3 is declared dead

State = dict[str, dict[str, str]]  # observer -> {peer name: state}


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """Three namespaces on a bridge; always removed, whatever happens."""
    with multicast_lab(hosts=3) as made:
        yield made


def _status_command(lab: NetnsLab, host: str, key_file: Path) -> list[str]:
    status = lab.status_command(host, port=PORT, key_file=key_file)
    return ["ip", "netns", "exec", lab.netns(host), *status]


def peer_states(lab: NetnsLab, key_file: Path, hosts: list[str]) -> State:
    """Ask each host's node, all at once, for its view: {host: {peer: state}}."""
    asking = {
        host: subprocess.Popen(
            _status_command(lab, host, key_file), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for host in hosts
    }
    views: State = {}
    for host, process in asking.items():
        try:
            out, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
        if process.returncode != 0:
            views[host] = {"<error>": err.decode(errors="replace").strip()}
            continue
        status: dict[str, Any] = json.loads(out)
        views[host] = {peer["name"]: peer["state"] for peer in status["peers"]}
    return views


def wait_for(
    what: str,
    lab: NetnsLab,
    key_file: Path,
    hosts: list[str],
    done: Callable[[State], bool],
    within_s: float,
) -> tuple[str, State]:
    """Poll until ``done(views)``; returns how long it took, as text, and the last views."""
    started = time.monotonic()
    while True:
        asked = time.monotonic()
        views = peer_states(lab, key_file, hosts)
        answered = time.monotonic()
        if done(views):
            # It happened before the answer, and (unless at once) after the
            # previous poll: say so rather than claim a precision we lack.
            return f"{answered - started:.2f} s (poll {answered - asked:.2f} s)", views
        if answered - started > within_s:
            pytest.fail(f"{what}: not within {within_s:.0f} s; last views: {views}")
        time.sleep(0.1)


def sees(views: State, observer: str, peer: str, state: str) -> bool:
    return views.get(observer, {}).get(peer) == state


def test_three_hosts_discover_partition_and_rejoin(lab: NetnsLab, tmp_path: Path) -> None:
    key_file = tmp_path / "mesh.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    hosts = lab.hosts
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for host in hosts:
            nodes[host] = lab.start_node(
                host, port=PORT, key_file=key_file, workdir=tmp_path, model=MODEL
            )
        deadline = time.monotonic() + READY_S
        for host in hosts:
            while not (tmp_path / f"{host}.ready.json").exists():
                if nodes[host].poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"node {host} did not start:\n{_logs(tmp_path, [host])}")
                time.sleep(0.05)

        # Discovery by mDNS alone: every node sees the two others alive.
        def formed(views: State) -> bool:
            return all(sees(views, a, b, "alive") for a in hosts for b in hosts if a != b)

        took, _ = wait_for("mesh forms by mDNS", lab, key_file, hosts, formed, FORM_S)
        print(f"\nmesh of {len(hosts)} formed by mDNS {took} after all were ready")

        # Pull h3's cable: h1 and h2 declare it dead.
        others = ["h1", "h2"]
        lab.unplug("h3")
        took, views = wait_for(
            "h3 declared dead after its cable was pulled",
            lab,
            key_file,
            others,
            lambda views: all(sees(views, o, "h3", "dead") for o in others),
            DEAD_S,
        )
        print(f"h3 dead on h1 and h2 {took} after unplugging (views: {views})")
        assert all(sees(views, a, b, "alive") for a in others for b in others if a != b), views

        # While unplugged, h3 stays dead (hearsay between h1 and h2 never
        # revives it), h1 and h2 keep each other, and h3 gives both up.
        hold_until = time.monotonic() + HOLD_S
        while time.monotonic() < hold_until:
            views = peer_states(lab, key_file, hosts)
            assert all(sees(views, o, "h3", "dead") for o in others), views
            assert sees(views, "h1", "h2", "alive") and sees(views, "h2", "h1", "alive"), views
            time.sleep(0.2)
        assert all(sees(views, "h3", o, "dead") for o in others), views

        # Plug it back: h3 is alive again on h1 and h2, and sees them alive.
        lab.plug("h3")
        took, views = wait_for(
            "h3 rejoins after its cable is plugged back",
            lab,
            key_file,
            hosts,
            formed,
            REJOIN_S,
        )
        print(f"h3 alive again everywhere {took} after plugging back (views: {views})")

        for host, process in nodes.items():
            assert process.poll() is None, f"node {host} exited:\n{_logs(tmp_path, [host])}"
    except BaseException:
        print(_logs(tmp_path, hosts))
        raise
    finally:
        # The fixture's clean-up does this too; stopping here first lets the
        # nodes' logs show a clean shutdown.
        lab.cleanup()


def _logs(tmp_path: Path, hosts: list[str]) -> str:
    parts = []
    for host in hosts:
        log = tmp_path / f"{host}.log"
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        parts.append(f"--- {host} ---\n{text[-4000:]}")
    return "\n".join(parts)
