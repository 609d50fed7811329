"""An attacker's tools, shared by tests/security and benchmarks/attack.py:
the raw handshake, RSS of a process, mutated and random RPC frames, and
connection storms. Everything targets 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

from tests.helpers.raw_rpc import RawConnection

__all__ = ["closed_with", "rss_bytes", "v1_handshake"]

_CLIENT_LABEL = b"edgemesh/hello/client\x00"


async def v1_handshake(raw: RawConnection, key: bytes, *, msgid: int = 1) -> None:
    """Prove ``key`` over a bare socket with the first (version 1) hello, as a
    client written in another language would. Raises AssertionError if refused."""
    client_nonce = secrets.token_bytes(32)
    first = await raw.call(msgid, "hello", [{"nonce": client_nonce}])
    assert first[2] is None, f"hello refused: {first[2]}"
    server_nonce = first[3]["nonce"]
    proof = hmac.new(key, _CLIENT_LABEL + server_nonce + client_nonce, hashlib.sha256).digest()
    second = await raw.call(msgid + 1, "hello", [{"proof": proof}])
    assert second[2] is None, f"proof refused: {second[2]}"


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process now (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def closed_with(raw: RawConnection, timeout: float = 5.0) -> Any:
    """Read until the peer closes (then close our side too); the last error
    notification it sent, or None."""
    notice = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    message = await raw.receive(timeout)
                except ConnectionError:  # reset, or our own write hit the close
                    return notice
                if message is None:
                    return notice
                if isinstance(message, list) and message[:2] == [2, "error"]:
                    notice = message[2]
    finally:
        # Not wait_closed(): after a reset it re-raises what the writes hit.
        raw.writer.close()
