"""Several hosts on one machine: network namespaces on a private bridge (TESTING.md).

A :class:`NetnsLab` makes, with names unique to this run, a bridge with no IP
address and ``hosts`` namespaces, each joined to it by a veth pair whose inner
end is ``eth0`` with address ``SUBNET.N/24``. Nothing touches the machine's own
interfaces or routes: the subnet exists only inside the namespaces, and the
bridge has no address, so the host never routes to it.

Every object is recorded *before* the command that makes it, so that
:meth:`NetnsLab.cleanup` removes whatever a partial set-up left; cleanup is
idempotent and never raises for something already gone. It also ends the
processes the lab started (SIGTERM, then SIGKILL) and any process still
inside one of its namespaces, by pid. Names carry the test process's pid, so
that a lab left behind by a run that was SIGKILLed (and never cleaned up) is
swept by the next one, and a live lab of a parallel run is never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

__all__ = ["LabUnavailable", "NetnsLab", "multicast_lab", "sweep_leftovers", "unavailable_reason"]

# A subnet unlikely to be in use; it exists only inside the lab's namespaces.
SUBNET = "10.77.0"

# What `ip` prints when the thing to delete is already gone.
_GONE = ("Cannot find device", "No such file or directory", "does not exist")


class LabUnavailable(Exception):
    """The machine cannot make the lab (no root, no `ip`, no namespace support)."""


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or None if they may be."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the system tests as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result


_MCAST_RECEIVER = """
import socket, struct, sys
group, port, local = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton(local))
s.settimeout(5.0)
print("ready", flush=True)
try:
    data, sender = s.recvfrom(100)
except TimeoutError:
    print("timeout", flush=True)
    sys.exit(1)
print("got", data.decode(), sender[0], flush=True)
"""

_MCAST_SENDER = """
import socket, sys, time
group, port, local = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local))
for _ in range(20):
    s.sendto(b"hello-from-" + local.encode(), (group, port))
    time.sleep(0.1)
"""


class NetnsLab:
    """A bridge and ``hosts`` namespaces with veth pairs; see the module docstring."""

    def __init__(self, hosts: int, subnet: str = SUBNET) -> None:
        if not 1 <= hosts <= 9:
            raise ValueError("1 to 9 hosts")
        # Our pid (so a later run can tell a leftover from a live lab) and a
        # random byte: parallel or leftover runs never collide, and interface
        # names stay within the 15-character limit (at most 14 here).
        self.tag = f"{os.getpid():x}g{secrets.token_hex(1)}"
        self.subnet = subnet
        self.bridge = f"emb{self.tag}"  # 9 characters
        self.hosts = [f"h{n}" for n in range(1, hosts + 1)]
        self._netns = {host: f"em-{self.tag}-{host}" for host in self.hosts}
        self._veth = {host: f"em{self.tag}{host}" for host in self.hosts}  # 10 characters
        self._made_netns: list[str] = []
        self._made_links: list[str] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    # --- names -----------------------------------------------------------------------

    def netns(self, host: str) -> str:
        return self._netns[host]

    def veth(self, host: str) -> str:
        """The host-side end of ``host``'s cable (on the bridge)."""
        return self._veth[host]

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 1}"

    # --- set-up ----------------------------------------------------------------------

    def setup(self) -> None:
        """Make it all; raises LabUnavailable if the machine cannot, RuntimeError otherwise."""
        reason = unavailable_reason()
        if reason is not None:
            raise LabUnavailable(reason)
        sweep_leftovers()
        first = self.netns(self.hosts[0])
        self._made_netns.append(first)
        made = _ip("netns", "add", first, check=False)
        if made.returncode != 0:
            self._made_netns.remove(first)
            raise LabUnavailable(f"`ip netns add` failed: {made.stderr.strip()}")
        # Multicast snooping off: mDNS and the check below should be flooded
        # without waiting for IGMP; and (where the kernel allows it per
        # bridge) the host's iptables stay out of the lab's bridged traffic.
        self._made_links.append(self.bridge)
        made = _ip("link", "add", self.bridge, "type", "bridge", "mcast_snooping", "0", check=False)
        if made.returncode != 0:
            raise LabUnavailable(f"cannot make a bridge: {made.stderr.strip()}")
        _ip("link", "set", self.bridge, "type", "bridge", "nf_call_iptables", "0", check=False)
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            ns, veth = self.netns(host), self.veth(host)
            if ns not in self._made_netns:
                self._made_netns.append(ns)
                _ip("netns", "add", ns)
            self._made_links.append(veth)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "multicast", "on", "master", self.bridge, "up")
            self.run_in(host, ["ip", "link", "set", "lo", "up"])
            self.run_in(host, ["ip", "addr", "add", f"{self.address(host)}/24", "dev", "eth0"])
            self.run_in(host, ["ip", "link", "set", "eth0", "multicast", "on", "up"])

    def run_in(
        self, host: str, command: Sequence[str], timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``host`` and wait; raises RuntimeError if it fails."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns(host), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} in {host} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result

    def start_in(
        self, host: str, command: Sequence[str], *, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process inside ``host`` (``ip netns exec`` execs it: same pid)."""
        out: IO[bytes] | int = subprocess.PIPE if log is None else log.open("wb")
        try:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns(host), *command],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self._processes.append(process)
        return process

    def start_node(
        self,
        host: str,
        *,
        port: int,
        key_file: Path,
        workdir: Path,
        model: str,
        extra: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """``edgemesh node`` named ``host`` inside it, on its own address, mDNS on that
        interface only; it writes ``workdir/HOST.ready.json`` and logs to ``HOST.log``."""
        address = self.address(host)
        command = [sys.executable, "-m", "mesh", "node", "--name", host, "--host", address]
        command += ["--port", str(port), "--interface", address, "--mesh-key-file", str(key_file)]
        command += ["--ready-file", str(workdir / f"{host}.ready.json"), "--model", model]
        command += ["--log-level", "info", *extra]
        return self.start_in(host, command, log=workdir / f"{host}.log")

    def status_command(self, host: str, *, port: int, key_file: Path) -> list[str]:
        """``edgemesh status --json`` of the node on ``host``, to run inside ``host``."""
        node = f"{self.address(host)}:{port}"
        command = [sys.executable, "-m", "mesh", "status", "--node", node]
        return [*command, "--mesh-key-file", str(key_file), "--json", "--timeout", "3"]

    def check_multicast(self, port: int = 47777, group: str = "239.255.77.77") -> None:
        """Raise RuntimeError unless multicast from the first host reaches all the others."""
        sender, *receivers = self.hosts
        listening = {
            host: self.start_in(
                host,
                [sys.executable, "-c", _MCAST_RECEIVER, group, str(port), self.address(host)],
            )
            for host in receivers
        }
        try:
            for host, process in listening.items():
                assert process.stdout is not None
                line = process.stdout.readline().decode().strip()
                if line != "ready":
                    raise RuntimeError(f"multicast receiver in {host} did not start: {line!r}")
            self.run_in(
                sender,
                [sys.executable, "-c", _MCAST_SENDER, group, str(port), self.address(sender)],
            )
            failed = []
            for host, process in listening.items():
                output, _ = process.communicate(timeout=10)
                if process.returncode != 0:
                    failed.append(f"{host}: {output.decode().strip()}")
            if failed:
                raise RuntimeError(
                    f"multicast from {sender} does not cross bridge {self.bridge}: "
                    + "; ".join(failed)
                )
        finally:
            for process in listening.values():
                _stop(process, grace_s=1.0)

    # --- the cable ---------------------------------------------------------------------

    def unplug(self, host: str) -> None:
        _ip("link", "set", self.veth(host), "down")

    def plug(self, host: str) -> None:
        _ip("link", "set", self.veth(host), "up")

    # --- clean-up ----------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Remove everything this lab made; idempotent. Returns what could not be removed."""
        problems: list[str] = []
        for process in self._processes:
            _stop(process)
        self._processes.clear()
        for ns in self._made_netns:
            # Anything still inside our namespace is ours (started by this lab).
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        for ns in list(self._made_netns):
            while _ip("netns", "pids", ns, check=False).stdout.split():
                if time.monotonic() > deadline:
                    problems.append(f"processes left in namespace {ns}")
                    break
                time.sleep(0.05)
            # Deleting a namespace destroys its eth0 and with it the veth's other end.
            result = _ip("netns", "del", ns, check=False)
            if result.returncode == 0 or any(g in result.stderr for g in _GONE):
                self._made_netns.remove(ns)
            else:
                problems.append(f"ip netns del {ns}: {result.stderr.strip()}")
        for link in list(self._made_links):
            result = _ip("link", "del", link, check=False)
            if result.returncode == 0 or any(g in result.stderr for g in _GONE):
                self._made_links.remove(link)
            else:
                problems.append(f"ip link del {link}: {result.stderr.strip()}")
        return problems


_LEFTOVER_NETNS = re.compile(r"^em-([0-9a-f]+)g[0-9a-f]{2}-h[0-9]$")
_LEFTOVER_BRIDGE = re.compile(r"^emb([0-9a-f]+)g[0-9a-f]{2}$")


def sweep_leftovers() -> None:
    """Remove labs whose test process is gone (it was SIGKILLed before its clean-up)."""

    def orphaned(pid_hex: str) -> bool:
        try:
            os.kill(int(pid_hex, 16), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split(" ")[0]
        match = _LEFTOVER_NETNS.match(name)
        if match is None or not orphaned(match.group(1)):
            continue
        for pid in _ip("netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        fields = line.split(":")
        name = fields[1].strip() if len(fields) > 1 else ""
        match = _LEFTOVER_BRIDGE.match(name)
        if match is not None and orphaned(match.group(1)):
            _ip("link", "del", name, check=False)


def _stop(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


@contextlib.contextmanager
def multicast_lab(hosts: int) -> Iterator[NetnsLab]:
    """A lab of ``hosts`` namespaces on a bridge that carries multicast, removed afterwards.

    Skips the test, with the reason, where namespaces cannot be made or
    multicast does not cross the bridge; fails it if cleaning up leaves
    anything behind.
    """
    import pytest  # only the tests use this helper; the lab itself is plain

    lab = NetnsLab(hosts=hosts)
    try:
        try:
            lab.setup()
        except LabUnavailable as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        try:
            lab.check_multicast()
        except RuntimeError as exc:
            pytest.skip(f"multicast does not work between namespaces here: {exc}")
        yield lab
    finally:
        problems = lab.cleanup()
        assert not problems, problems
