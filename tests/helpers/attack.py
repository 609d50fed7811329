"""An attacker's tools, shared by tests/security and benchmarks/attack.py:
the raw handshake, RSS of a process, mutated and random RPC frames, and
connection storms. Everything targets 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import numpy as np

from mesh.core.wire import oip
from tests.helpers.raw_rpc import RawConnection

__all__ = [
    "LENIENT",
    "FuzzTally",
    "HttpTally",
    "Target",
    "alive",
    "closed_with",
    "fuzz_body",
    "fuzz_frame",
    "fuzz_http",
    "fuzz_rpc",
    "rss_bytes",
    "start_target",
    "stop_target",
    "storm",
    "v1_handshake",
]

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


# --- a node process to attack --------------------------------------------------------


@dataclass
class Target:
    """A keyed ``edgemesh node`` process on 127.0.0.1 with its RPC and HTTP ports."""

    process: subprocess.Popen[bytes]
    rpc_port: int
    http_port: int
    key: bytes

    @property
    def rss(self) -> int:
        return rss_bytes(self.process.pid)


# For fuzzing the parsers rather than the door: strangers' failed handshakes
# would otherwise rate-limit 127.0.0.1, and the fuzzer's own handshakes with it.
LENIENT = {"EDGEMESH_AUTH_FAILURE_BURST": "1000000"}


def start_target(
    workdir: Path,
    *,
    source: Path | None = None,
    name: str = "target",
    environ: dict[str, str] | None = None,
) -> Target:
    """Start a keyed node with an HTTP port (``source``: run that checkout's
    ``mesh`` package instead of this one, to compare before and after;
    ``environ``: EDGEMESH_ settings for it)."""
    key = secrets.token_hex(32).encode()
    key_file = workdir / f"{name}.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "mesh", "node", "--name", name, "--host", "127.0.0.1",
        "--port", "0", "--http-port", "0", "--no-mdns", "--model", "digits-small",
        "--executor-threads", "1", "--mesh-key-file", str(key_file),
        "--ready-file", str(ready), "--log-level", "error",
    ]  # fmt: skip
    env = {**os.environ, **(environ or {})}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    with (workdir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=source or workdir, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the node did not start; see {workdir / f'{name}.log'}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    return Target(process, int(info["rpc_port"]), int(info["http_port"]), key)


def stop_target(target: Target) -> None:
    target.process.terminate()
    try:
        target.process.wait(10)
    except subprocess.TimeoutExpired:
        target.process.kill()
        target.process.wait()


# --- fuzzed RPC frames -------------------------------------------------------------------

# A bin, array, map and str header each declaring gigabytes.
_BLOWN_UP = [
    b"\xc6\xff\xff\xff\xff",
    b"\xdd\x7f\xff\xff\xff",
    b"\xdf\x00\x10\x00\x00",
    b"\xdb\x04\x00\x00\x00",
]
_METHODS = ["hello", "ping", "status", "models", "infer", "steal", "result", "gossip", "nope"]


def _random_object(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -1.5, float("inf"), float("nan"), rng.random()])
    if kind == 4:
        return "".join(rng.choice("ab\n\x1b\u2028é{}") for _ in range(rng.randrange(12)))
    if kind == 5:
        return rng.randbytes(rng.randrange(40))
    if kind == 6:
        return rng.choice(["digits-small", "X", "<f4", "|O", "float32", ""])
    if kind == 7:
        return [_random_object(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 8:
        return {str(_random_object(rng, depth + 1))[:8]: _random_object(rng, depth + 1)
                for _ in range(rng.randrange(4))}  # fmt: skip
    tensor = {"dtype": rng.choice(["<f4", "<i8", "|O", "<c16", "bogus"]),
              "shape": [rng.choice([1, 0, -1, 64, 2**40]) for _ in range(rng.randrange(4))],
              "data": rng.randbytes(rng.choice([0, 4, 256, 257]))}  # fmt: skip
    return {"X": tensor}


def _valid_shaped(rng: random.Random) -> bytes:
    method = rng.choice(_METHODS)
    params = [_random_object(rng) for _ in range(rng.randrange(4))]
    shape = rng.randrange(4)
    if shape == 0:
        message: list[Any] = [0, rng.randrange(2**32), method, params]
    elif shape == 1:
        message = [2, method, params]
    elif shape == 2:
        message = [1, rng.randrange(100), _random_object(rng), _random_object(rng)]
    else:
        message = [_random_object(rng) for _ in range(rng.randrange(6))]
    return msgpack.packb(message, use_bin_type=True)


def _mutated(rng: random.Random) -> bytes:
    data = bytearray(_valid_shaped(rng))
    for _ in range(rng.randrange(1, 4)):
        if not data:
            break
        where = rng.randrange(len(data))
        action = rng.randrange(4)
        if action == 0:
            data[where] ^= 1 << rng.randrange(8)
        elif action == 1:
            del data[where:]
        elif action == 2:
            data[where:where] = rng.randbytes(rng.randrange(1, 6))
        else:  # a length or count field blown up
            data[where:where] = rng.choice(_BLOWN_UP)
    return bytes(data)


def fuzz_frame(rng: random.Random) -> bytes:
    """One frame: a valid call (10 %), a well-formed message with random contents
    (50 %), a byte-level mutation of one (30 %), or random bytes (10 %)."""
    draw = rng.random()
    if draw < 0.1:
        method = rng.choice(["ping", "status", "models"])
        return msgpack.packb([0, rng.randrange(2**32), method, []])
    if draw < 0.6:
        return _valid_shaped(rng)
    if draw < 0.9:
        return _mutated(rng)
    return rng.randbytes(rng.randrange(1, 64))


@dataclass
class FuzzTally:
    """What the node did with the frames (replies by kind, error codes by name)."""

    frames: int = 0
    connections: int = 0
    results: int = 0
    closes: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def add_reply(self, message: Any) -> None:
        if isinstance(message, list) and len(message) == 4 and message[0] == 1:
            error = message[2]
            if error is None:
                self.results += 1
            else:
                self.errors[str(error[0]) if isinstance(error, list) and error else "?"] += 1
        elif isinstance(message, list) and message[:2] == [2, "error"]:
            notice = message[2]
            self.errors[f"{notice[0]} (notice)" if isinstance(notice, list) else "?"] += 1


async def fuzz_rpc(
    port: int, key: bytes, *, frames: int, seed: int, per_connection: int = 40
) -> FuzzTally:
    """Send ``frames`` fuzzed frames: half on connections that passed the
    handshake (version 1, unsealed), half on strangers'; each connection takes
    up to ``per_connection`` frames, a few at a time, until the node closes it."""
    rng = random.Random(seed)
    tally = FuzzTally()
    while tally.frames < frames:
        raw = await RawConnection.open(port)
        tally.connections += 1
        try:
            if tally.connections % 2 == 0:
                await v1_handshake(raw, key)
            sent = 0
            while sent < per_connection and tally.frames < frames:
                batch = [fuzz_frame(rng) for _ in range(rng.randrange(1, 6))]
                raw.send_raw(b"".join(batch))
                sent += len(batch)
                tally.frames += len(batch)
                if not await _drain_replies(raw, tally):
                    tally.closes += 1
                    break
        except (ConnectionError, AssertionError, TimeoutError):
            tally.closes += 1
        finally:
            raw.writer.close()
    return tally


async def _drain_replies(raw: RawConnection, tally: FuzzTally) -> bool:
    """Read what the node sends for a short while; False once it closed."""
    try:
        await raw.writer.drain()
        while True:
            try:
                async with asyncio.timeout(0.002):
                    data = await raw.reader.read(65536)
            except TimeoutError:
                return True
            if not data:
                return False
            raw.unpacker.feed(data)
            for message in raw.unpacker:
                tally.add_reply(message)
    except (ConnectionError, ValueError, msgpack.ExtraData, msgpack.FormatError):
        return False


# --- fuzzed HTTP bodies -------------------------------------------------------------------


def fuzz_body(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """A V2 infer body: valid, mutated JSON, a binary-extension body with a random
    header length, or random bytes; and its extra headers."""
    x = np.zeros((rng.choice([1, 2, 0]), 64), np.float32)
    payload, json_length = oip.encode_infer_request({"X": x}, binary=rng.random() < 0.3)
    headers: dict[str, str] = {}
    if json_length is not None:
        headers["Inference-Header-Content-Length"] = str(
            rng.choice([json_length, json_length + 1, 0, 10**12, len(payload)])
        )
    draw = rng.random()
    if draw < 0.2:
        return payload, headers
    if draw < 0.8:
        data = bytearray(payload)
        for _ in range(rng.randrange(1, 6)):
            where = rng.randrange(len(data))
            choice = rng.randrange(3)
            if choice == 0:
                data[where] = rng.choice(b'{}[]",:0-1.eE9 \x00\xff')
            elif choice == 1:
                del data[where : where + rng.randrange(1, 20)]
            else:
                data[where:where] = rng.choice([b'"nan"', b"1e999", b"[[[[", b"null", b'"\\u0000"'])
        return bytes(data), headers
    return rng.randbytes(rng.randrange(200)), headers


@dataclass
class HttpTally:
    """Statuses and error codes the node answered fuzzed bodies with."""

    bodies: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    untyped: int = 0


async def fuzz_http(port: int, *, bodies: int, seed: int) -> HttpTally:
    """POST ``bodies`` fuzzed infer bodies over one keep-alive session."""
    rng = random.Random(seed)
    tally = HttpTally()
    url = f"http://127.0.0.1:{port}/v2/models/digits-small/infer"
    async with aiohttp.ClientSession() as http:
        for _ in range(bodies):
            body, headers = fuzz_body(rng)
            tally.bodies += 1
            async with http.post(url, data=body, headers=headers) as response:
                tally.statuses[response.status] += 1
                text = await response.read()
                if response.status >= 400:
                    try:
                        tally.codes[json.loads(text)["code"]] += 1
                    except (ValueError, KeyError, TypeError):
                        tally.untyped += 1
    return tally


# --- connection storms --------------------------------------------------------------------


async def storm(port: int, key: bytes, *, connections: int, concurrency: int = 16) -> int:
    """Open ``connections`` connections, each saying hello (half of them passing
    the handshake) and closing; returns how many the node answered."""
    answered = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        nonlocal answered
        async with gate:
            try:
                raw = await RawConnection.open(port)
            except OSError:
                return
            try:
                if index % 2:
                    await v1_handshake(raw, key)
                else:
                    await raw.call(1, "hello", [{"nonce": secrets.token_bytes(32)}])
                answered += 1
            except (ConnectionError, AssertionError, TimeoutError):
                pass
            finally:
                raw.writer.close()

    async with asyncio.TaskGroup() as tasks:
        for index in range(connections):
            tasks.create_task(one(index))
    return answered


async def alive(target: Target) -> bool:
    """The node still answers: a ping after the handshake, and HTTP liveness.

    An attack's failed handshakes leave 127.0.0.1 rate-limited for a while,
    so the handshake is retried for up to 20 s while the node says so.
    """
    rpc_ok = False
    for _ in range(40):
        raw = await RawConnection.open(target.rpc_port)
        try:
            await v1_handshake(raw, target.key)
            reply = await raw.call(9, "ping", [])
            rpc_ok = reply[2] is None
            break
        except AssertionError as refused:
            if "too many failed handshakes" not in str(refused):
                raise
        finally:
            await raw.close()
        await asyncio.sleep(0.5)
    live = f"http://127.0.0.1:{target.http_port}/v2/health/live"
    async with aiohttp.ClientSession() as http, http.get(live) as response:
        http_ok = response.status == 200
    return rpc_ok and http_ok and target.process.poll() is None
