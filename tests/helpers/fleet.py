"""Real ``edgemesh node`` processes on 127.0.0.1 for the system tests.

Each node emulates a one-slot device (the real model runs, each call is
padded to ``service_ms``), serves only digits-small, has mDNS off, and every
node after the first is given the first as its bootstrap peer. One fresh
mesh key is shared by all.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from mesh.demo.processes import start_node_process, stop_process
from mesh.sdk.client import MeshClient


class NodeFleet:
    """Nodes started by name; ``extra`` flags go to every one of them."""

    def __init__(self, workdir: Path, *, service_ms: str = "20", extra: Sequence[str] = ()) -> None:
        self.workdir = workdir
        self.key = secrets.token_hex(32).encode()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self._first: str | None = None
        self._flags = [
            "--model",
            "digits-small",
            "--no-mdns",
            "--slots",
            "1",
            "--executor-threads",
            "1",
            "--emulate-service-ms",
            service_ms,
            *extra,
        ]

    def start(self, name: str, extra: Sequence[str] = ()) -> None:
        """Start node ``name`` (bootstrapped from the first node started) and wait for it."""
        flags = [*self._flags, *extra]
        if self._first is not None:
            flags += ["--peer", self.address(self._first)]
        process, port = start_node_process(self.workdir, name=name, key=self.key, extra=flags)
        self.processes[name] = process
        self.ports[name] = port
        self._first = self._first or name

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def client(self, name: str) -> MeshClient:
        return MeshClient(self.address(name), mesh_key=self.key, timeout=30)

    def stop_all(self) -> None:
        """SIGTERM every process still running (SIGKILL if it lingers)."""
        for process in self.processes.values():
            stop_process(process)
