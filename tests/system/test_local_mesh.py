"""The README's "A local mesh on one machine", run exactly as written.

Two ``edgemesh node`` processes started with the README's own commands (no
``--name``, no ``--interface``) must find each other within 2 s of the second
listening, over mDNS on 127.0.0.1 only, with distinct names; then the
README's ``edgemesh status`` commands must show each one the other.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh import Client
from mesh.config import load_node_config

pytestmark = pytest.mark.system

README = Path(__file__).resolve().parents[2] / "README.md"
EDGEMESH = str(Path(sys.executable).parent / "edgemesh")
SECTION = "### A local mesh on one machine"
# The promise: the mesh forms this soon after the second node listens.
FORMS_WITHIN_S = 2.0
READY_TIMEOUT_S = 60.0


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's local-mesh block, comments dropped."""
    text = README.read_text()
    start = text.index(SECTION)
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no ```sh block under {SECTION!r} in the README"
    lines = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line]


def flags_of(command: list[str]) -> dict[str, object]:
    """``--host X --port Y`` as the settings load_node_config takes."""
    pairs = zip(command[2::2], command[3::2], strict=True)
    return {flag.removeprefix("--").replace("-", "_"): value for flag, value in pairs}


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the node binds: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def clean_environment() -> dict[str, str]:
    """This environment without EDGEMESH_* settings: the commands alone decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEMESH_")}


@contextlib.contextmanager
def started(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [EDGEMESH, *command[1:]], stdout=out, stderr=subprocess.STDOUT, env=clean_environment()
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_listening(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while " listening on " not in log.read_text():
        assert process.poll() is None, f"the node exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"the node never listened:\n{log.read_text()}"
        time.sleep(0.02)


def wait_logged(log: Path, text: str) -> None:
    """Wait (bounded) for ``text`` in ``log``: mDNS announces after probing, ~1 s."""
    deadline = time.monotonic() + 10
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{log.read_text()}"
        time.sleep(0.05)


def alive_peers(status: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["address"] for p in status.get("peers", []) if p["state"] == "alive"}


def test_the_readme_local_mesh_forms_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    nodes = [c for c in commands if c[:2] == ["edgemesh", "node"]]
    statuses = [c for c in commands if c[:2] == ["edgemesh", "status"]]
    assert len(nodes) == 2 and len(statuses) == 2, commands
    ports = [int(str(flags_of(c)["port"])) for c in nodes]
    busy = [port for port in ports if not port_is_free(port)]
    if busy:
        pytest.skip(f"the README's ports {busy} are in use on this machine")
    for command in nodes:
        # Checked before anything starts: these commands must keep mDNS on
        # loopback, or the test would multicast on the machine's real network.
        config = load_node_config(flags_of(command), {})
        assert config.mesh.interfaces == ("127.0.0.1",), (command, config.mesh.interfaces)
    hostname = socket.gethostname()
    names = [hostname if port == 7700 else f"{hostname}-{port}" for port in ports]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]

    with started(nodes[0], logs[0]) as first:
        wait_listening(first, logs[0])
        with started(nodes[1], logs[1]) as second:
            wait_listening(second, logs[1])
            ready_at = time.monotonic()
            with Client(f"127.0.0.1:{ports[0]}") as a, Client(f"127.0.0.1:{ports[1]}") as b:
                # Each sees the other, by its own name, at 127.0.0.1. (Other open
                # nodes on this machine's loopback mDNS may join too: not counted.)
                wanted = (
                    {names[1]: f"127.0.0.1:{ports[1]}"},
                    {names[0]: f"127.0.0.1:{ports[0]}"},
                )
                seen: tuple[dict[str, str], ...] = ({}, {})
                while time.monotonic() - ready_at < FORMS_WITHIN_S:
                    seen = (alive_peers(a.status()), alive_peers(b.status()))
                    if all(
                        want.items() <= got.items() for want, got in zip(wanted, seen, strict=True)
                    ):
                        break
                    time.sleep(0.05)
                for want, got in zip(wanted, seen, strict=True):
                    assert want.items() <= got.items(), (seen, [log.read_text() for log in logs])
                assert (a.status()["name"], b.status()["name"]) == tuple(names)

            # The README's status commands, as written, show each the other.
            others = zip(reversed(names), reversed(ports), strict=True)
            for command, (other, port) in zip(statuses, others, strict=True):
                shown = subprocess.run(
                    [EDGEMESH, *command[1:]],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=clean_environment(),
                    check=False,
                )
                assert shown.returncode == 0, shown.stderr
                assert "no peers known" not in shown.stdout
                # The peer's row: its name first, then (in any order) its state and address.
                rows = [line.split() for line in shown.stdout.splitlines()]
                row = next((r for r in rows if r[:1] == [other]), [])
                assert {"alive", f"127.0.0.1:{port}"} <= set(row), shown.stdout
            for log, name in zip(logs, names, strict=True):
                assert f"no --name given: calling this node {name!r}" in log.read_text()
            # mDNS ran on loopback alone, and what was heard there names 127.0.0.1 only.
            found = re.search(
                rf"mDNS: found {re.escape(names[0])} \(id \w+\) at (.+?), rpc port ",
                logs[1].read_text(),
            )
            assert found is not None and found.group(1) == "127.0.0.1", logs[1].read_text()
            for log, port in zip(logs, ports, strict=True):
                wait_logged(log, f"on 127.0.0.1, rpc port {port}")
