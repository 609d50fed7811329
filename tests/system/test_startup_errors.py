"""Start-up errors of ``edgemesh node`` and ``edgemesh gateway`` as a user meets them:
one line on stderr naming the flag to change, one exit status per kind (README,
"Exit statuses"), no traceback, and, where it can be checked, before anything listens
or the models load (issue 18)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import ifaddr
import pytest

from mesh.demo.processes import stop_process
from tests.helpers import MODELS_DIR

pytestmark = pytest.mark.system

# A documentation address (RFC 5737, TEST-NET-2): no machine of ours has it.
NOT_OURS = "198.51.100.77"
LOOPBACK = "127.0.0.1"
# What a node or gateway logs once it loads its models or listens: none of
# it may appear when a check fails first.
STARTED = ("serving model", "listening on")


def edgemesh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # Settings come only from the flags below.
        env={k: v for k, v in os.environ.items() if not k.startswith("EDGEMESH_")},
    )


def node(*args: str) -> subprocess.CompletedProcess[str]:
    return edgemesh("node", "--name", "startup", "--models", str(MODELS_DIR), *args)


def assert_one_line(
    result: subprocess.CompletedProcess[str], status: int, line: str, *, whole: bool = True
) -> None:
    """Exit ``status``, and ``line`` (or, not ``whole``, a line that starts so)
    is the only thing the CLI itself said."""
    assert result.returncode == status, result.stderr
    said = [text for text in result.stderr.splitlines() if text.startswith("edgemesh:")]
    assert len(said) == 1, result.stderr
    if whole:
        assert said[0] == f"edgemesh: {line}", result.stderr
    else:
        assert said[0].startswith(f"edgemesh: {line}"), result.stderr
    assert "Traceback" not in result.stderr
    assert "ExceptionGroup" not in result.stderr


def assert_checked_first(result: subprocess.CompletedProcess[str]) -> None:
    for sign in STARTED:
        assert sign not in result.stderr, result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another socket listens on, for the duration of the test."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def in_use(flag: str, port: int) -> str:
    return (
        f"{flag} {port} is in use on {LOOPBACK} (address already in use); "
        "choose another port, or 0 for any free one"
    )


def test_an_rpc_port_in_use(taken_port: int) -> None:
    result = node("--host", LOOPBACK, "--port", str(taken_port), "--no-mdns")
    assert_one_line(result, 3, in_use("--port", taken_port))
    assert_checked_first(result)


def test_an_http_port_in_use(taken_port: int) -> None:
    result = node("--host", LOOPBACK, "--port", "0", "--http-port", str(taken_port), "--no-mdns")
    assert_one_line(result, 3, in_use("--http-port", taken_port))
    assert_checked_first(result)


def test_a_gateway_port_in_use_is_the_same_kind(taken_port: int) -> None:
    result = edgemesh("gateway", "--host", LOOPBACK, "--port", str(taken_port))
    assert_one_line(result, 3, in_use("--port", taken_port))
    assert_checked_first(result)


def test_the_rpc_and_http_ports_must_differ() -> None:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    result = node("--host", LOOPBACK, "--port", str(port), "--http-port", str(port), "--no-mdns")
    assert_one_line(
        result,
        2,
        f"configuration error: --http-port {port} is the same port as --port; "
        "give each its own port (or 0 for any free one)",
    )
    assert_checked_first(result)


def machine_addresses() -> set[str]:
    return {
        ip.ip if isinstance(ip.ip, str) else ip.ip[0]
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
    }


@pytest.fixture
def not_ours() -> str:
    if NOT_OURS in machine_addresses():
        pytest.skip(f"this machine has {NOT_OURS}, the address the test needs it not to have")
    return NOT_OURS


def test_an_interface_name_instead_of_an_address() -> None:
    # Fails on the flag's value alone: no mDNS socket is ever opened.
    result = node("--host", LOOPBACK, "--port", "0", "--interface", "eth0")
    assert_one_line(
        result,
        2,
        "configuration error: --interface: 'eth0' cannot be used: not an IP address; "
        "give an IP address of this machine, not an interface's name",
    )
    assert_checked_first(result)


def test_an_interface_address_this_machine_lacks(not_ours: str) -> None:
    # Checked before zeroconf starts: nothing is sent anywhere.
    result = node("--host", LOOPBACK, "--port", "0", "--interface", not_ours)
    assert_one_line(
        result,
        4,
        f"--interface {not_ours} is not an address of this machine (its addresses: ",
        whole=False,
    )
    assert LOOPBACK in result.stderr.splitlines()[-1]  # it lists the ones it has
    assert_checked_first(result)


@pytest.mark.parametrize("command", ["node", "gateway"])
def test_a_host_this_machine_lacks(command: str, not_ours: str) -> None:
    args = ["--host", not_ours, "--port", "0"]
    result = node(*args, "--no-mdns") if command == "node" else edgemesh("gateway", *args)
    assert_one_line(
        result,
        4,
        f"--host {not_ours} is not an address of this machine (cannot assign requested "
        "address); give one of its addresses, or 0.0.0.0 for all",
    )
    assert_checked_first(result)


def test_a_name_already_taken_on_the_network(tmp_path: Path) -> None:
    # mDNS on loopback only, as every test that uses it.
    name = f"taken-{os.getpid()}"
    common = ["--host", LOOPBACK, "--port", "0", "--interface", LOOPBACK, "--name", name]
    first_log = tmp_path / "first.log"
    log = first_log.open("w")
    first = subprocess.Popen(
        [sys.executable, "-m", "mesh", "node", *common],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # The name is checked by mDNS probing (RFC 6762): wait until the
        # first node has won its probe and announces the name.
        deadline = time.monotonic() + 30
        while "mDNS: announcing" not in first_log.read_text():
            assert first.poll() is None, first_log.read_text()
            assert time.monotonic() < deadline, "the first node never announced itself"
            time.sleep(0.05)
        # On one host the probe's unicast answer may reach another process's
        # port 5353 socket; the node then relies on its browser resolving the
        # holder while it probes, which wins most but not all races. A second
        # node that missed it runs on: stopped by the timeout, and tried again.
        misses: list[str] = []
        for _ in range(3):
            try:
                second = edgemesh("node", *common, timeout=15)
                break
            except subprocess.TimeoutExpired as exc:
                misses.append(str(exc.stderr))
        else:
            raise AssertionError(f"the second node ran on three times: {misses}")
        assert_one_line(
            second,
            5,
            f"the node name '{name}' is already taken on this network "
            "(another node answered for it); choose another --name",
        )
    finally:
        assert stop_process(first) == 0
        log.close()
