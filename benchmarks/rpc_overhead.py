"""RPC overhead of an edgemesh node, against direct onnxruntime and a gRPC echo (issue 2).

Run from the repository root::

    .venv/bin/python benchmarks/rpc_overhead.py            # full run, about a minute
    .venv/bin/python benchmarks/rpc_overhead.py --quick    # a tenth of the calls
    .venv/bin/python benchmarks/rpc_overhead.py --json out.json

In one run, on this machine, over loopback only, it measures ``digits-small``
(float32 ``[N, 64]`` = 256 B per row; N = 1, 16, 2400 give 256 B, 4 KB and
600 KB inputs, rows from the real held-out ``digits-test.npz``, tiled for 2400):

* onnxruntime called directly in this process, with the node's session
  options (one intra-op thread, spinning off);
* the same inference through a real ``edgemesh node`` process holding a mesh
  key (the authenticated path), via :class:`mesh.sdk.client.MeshClient`: one call
  in flight (latency), then many in flight on one connection (throughput);
* the same inference on a second connection with sealing off
  (``MeshClient(seal=False)``): what sealing the link (AES-256-GCM after the
  handshake, issue 19) costs, as a ratio measured in the same rounds; and
  the sealing code alone on big frames, in this process (MB/s);
* ``ping`` through the node, one in flight and many in flight;
* ``ping`` carrying a 600 KB parameter, which the node reads, parses and
  refuses with BadRequest: transport and framing of 600 KB, no inference;
* a gRPC (``grpc.aio``) echo server in another process, raw bytes in and out
  (generic handlers, identity serializers, no protobuf), same payload sizes;
* two floors, each a length-prefixed echo server in another process: plain
  blocking sockets on both sides (what the kernel and the scheduler cost),
  and asyncio streams on both sides (what any asyncio RPC pays before doing
  anything).

The one-in-flight rows are interleaved in rounds so that every system sees the
same moments of a noisy machine; the ratios come from this one run. The
many-in-flight rows run once each, after them. It prints a table, then the
issue's targets beside the measured figures with PASS or MISS. It asserts
nothing: a benchmark is not a test. Every loop is bounded by a call count, the
helper servers exit by themselves after 15 minutes, and every process this
script starts is stopped in a ``finally`` block, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib.util
import json
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from machine_info import machine, machine_line
from stoppable import run_stoppable

from mesh.config import RpcConfig, RuntimeConfig, bundled_models_dir
from mesh.core.wire import sealing
from mesh.core.wire.framing import encode_request, encode_response
from mesh.core.wire.tensors import encode_tensors
from mesh.demo.processes import start_node_process, stop_process
from mesh.errors import BadRequest
from mesh.rpc import RpcClient
from mesh.runtime.runtime import Runtime
from mesh.sdk.client import MeshClient

MODEL = "digits-small"
ROWS = {"256 B": 1, "4 KB": 16, "600 KB": 2400}
SMALL = ("256 B", "4 KB")
LARGE = "600 KB"
GRPC_METHOD = "/bench.Echo/Echo"
MAX_MESSAGE = 64 * 1024 * 1024
# Helper servers exit by themselves after this long, even if never stopped.
HELPER_LIFETIME_S = 900.0
READY_TIMEOUT_S = 30.0
LENGTH = struct.Struct("<I")

# Calls in flight on the one connection for the throughput rows. The node
# refuses more than 1024 concurrent infer calls per connection (Overloaded).
WINDOW_SMALL = 64
WINDOW_PING = 512
WINDOW_LARGE = 8

# Targets from issue 2. Never asserted; printed beside what was measured.
TARGET_OVERHEAD_US = 60.0
TARGET_PING_PER_S = 50_000.0
TARGET_LARGE_MB_S = 1000.0  # 1 GB/s, decimal
TARGET_GRPC_RATIO = 5.0
# Issue 19: sealing costs at most this much on a 256 B infer, and seals big tensors this fast.
TARGET_SEAL_COST = 0.10
TARGET_SEAL_MB_S = 500.0
SEAL_FRAME_BYTES = (600 * 1024, 16 * 1024 * 1024)

NODE = "edgemesh node"
NODE_PLAIN = "node, no seal"
GRPC = "grpc.aio"
ORT = "onnxruntime"
TCP = "tcp sockets"
AIO = "asyncio streams"

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class Counts:
    """Measured calls per row (warm-up calls come on top) and interleaving rounds."""

    seq_small: int
    seq_large: int
    pipe_small: int
    pipe_large: int
    ping_pipe: int
    warmup_small: int
    warmup_large: int
    rounds: int

    @classmethod
    def make(cls, quick: bool) -> Counts:
        divide = 10 if quick else 1

        def n(value: int) -> int:
            return max(20, value // divide)

        return cls(
            seq_small=n(2000),
            seq_large=n(300),
            pipe_small=n(10_000),
            pipe_large=n(1000),
            ping_pipe=n(20_000),
            warmup_small=n(200),
            warmup_large=n(40),
            rounds=2 if quick else 5,
        )

    def seq(self, payload: str) -> int:
        return self.seq_large if payload == LARGE else self.seq_small

    def pipe(self, payload: str) -> int:
        return self.pipe_large if payload == LARGE else self.pipe_small

    def warmup(self, payload: str) -> int:
        return self.warmup_large if payload == LARGE else self.warmup_small


@dataclass
class Timing:
    """Per-call latencies and the wall time of the calls that produced them."""

    latencies_ns: list[int] = field(default_factory=list)
    elapsed_ns: int = 0

    def merge(self, other: Timing) -> None:
        self.latencies_ns += other.latencies_ns
        self.elapsed_ns += other.elapsed_ns


# Runs this many calls and returns their timing.
Runner = Callable[[int], Awaitable[Timing]]


@dataclass(frozen=True)
class Traffic:
    """What one call of a case moves, and how many calls warm it up."""

    in_bytes: int  # input tensor (payload) bytes per call
    wire_bytes: int  # bytes on the wire per call, both ways (0: not counted)
    warmup: int


@dataclass
class Case:
    """One configuration to measure."""

    system: str
    call: str
    payload: str
    in_flight: int
    calls: int
    traffic: Traffic
    run: Runner
    timing: Timing = field(default_factory=Timing)


@dataclass
class Row:
    """One measured configuration, as printed and written to JSON."""

    system: str
    call: str
    payload: str
    in_flight: int
    calls: int
    p50_us: float
    p99_us: float
    calls_per_s: float
    in_mb_s: float  # input tensor bytes per second, 1 MB = 10^6 B
    wire_mb_s: float  # wire bytes (both ways) per second


def to_row(case: Case) -> Row:
    lat = np.asarray(case.timing.latencies_ns, dtype=np.float64) / 1000.0
    p50, p99 = np.percentile(lat, [50, 99])
    rate = len(lat) / (case.timing.elapsed_ns / 1e9)
    return Row(
        system=case.system,
        call=case.call,
        payload=case.payload,
        in_flight=case.in_flight,
        calls=len(lat),
        p50_us=float(p50),
        p99_us=float(p99),
        calls_per_s=rate,
        in_mb_s=rate * case.traffic.in_bytes / 1e6,
        wire_mb_s=rate * case.traffic.wire_bytes / 1e6,
    )


# --- measuring loops ------------------------------------------------------------


def sync_runner(call: Callable[[], object]) -> Runner:
    """Time a blocking call, one at a time (it blocks the event loop, which is idle)."""

    async def run(calls: int) -> Timing:
        clock = time.perf_counter_ns
        latencies: list[int] = []
        started = clock()
        for _ in range(calls):
            begin = clock()
            call()
            latencies.append(clock() - begin)
        return Timing(latencies, clock() - started)

    return run


def async_runner(call: Callable[[], Awaitable[object]], in_flight: int) -> Runner:
    """Time ``calls`` calls made by ``in_flight`` workers, each awaiting one at a time."""

    async def run(calls: int) -> Timing:
        clock = time.perf_counter_ns
        latencies: list[int] = []

        async def worker(count: int) -> None:
            for _ in range(count):
                begin = clock()
                await call()
                latencies.append(clock() - begin)

        workers = max(1, min(in_flight, calls))
        base, extra = divmod(calls, workers)
        started = clock()
        if workers == 1:
            await worker(calls)
        else:
            await asyncio.gather(*(worker(base + (i < extra)) for i in range(workers)))
        return Timing(latencies, clock() - started)

    return run


async def measure_interleaved(cases: list[Case], rounds: int) -> None:
    """Warm every case up, then run each case's calls in ``rounds`` interleaved slices."""
    for case in cases:
        await case.run(case.traffic.warmup)
    for index in range(rounds):
        for case in cases:
            share = case.calls // rounds + (index < case.calls % rounds)
            case.timing.merge(await case.run(share))


async def measure_once(case: Case) -> None:
    await case.run(case.traffic.warmup)
    case.timing.merge(await case.run(case.calls))


# --- the data and direct onnxruntime ---------------------------------------------


def load_inputs() -> Arrays:
    with np.load(bundled_models_dir() / "digits-test.npz") as data:
        digits = np.ascontiguousarray(data["X"], dtype=np.float32)
    inputs = {}
    for payload, rows in ROWS.items():
        reps = -(-rows // len(digits))
        inputs[payload] = np.ascontiguousarray(np.tile(digits, (reps, 1))[:rows])
    return inputs


def direct_session() -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(bundled_models_dir() / f"{MODEL}.onnx"),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )


def infer_wire_bytes(x: np.ndarray[Any, Any], outputs: Arrays) -> tuple[int, int]:
    """Bytes of one infer request and of its reply, as MeshClient and the node send them."""
    params = [MODEL, encode_tensors({"X": x}), {"request_id": secrets.token_hex(16)}]
    request = encode_request(12345, "infer", params)
    reply = encode_response(12345, None, encode_tensors(outputs))
    return len(request), len(reply)


# --- helper servers (each runs in its own process: --serve KIND READY_FILE) ---------


def _identity(data: bytes) -> bytes:
    return data


def _write_ready(ready_file: Path, port: int) -> None:
    temporary = ready_file.with_suffix(".tmp")
    temporary.write_text(json.dumps({"port": port}))
    temporary.replace(ready_file)


def _recv_exactly(conn: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``conn``; False on EOF."""
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def serve_tcp_echo(ready_file: Path) -> None:
    """Blocking sockets: read a length-prefixed message whole, send its body back."""
    deadline = time.monotonic() + HELPER_LIFETIME_S
    buffer = bytearray(MAX_MESSAGE)
    view = memoryview(buffer)
    header = memoryview(bytearray(LENGTH.size))
    with socket.create_server(("127.0.0.1", 0)) as server:
        _write_ready(ready_file, server.getsockname()[1])
        while (left := deadline - time.monotonic()) > 0:
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                return
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                with contextlib.suppress(OSError):
                    while _recv_exactly(conn, header):
                        (size,) = LENGTH.unpack(header)
                        if size > len(buffer) or not _recv_exactly(conn, view[:size]):
                            break
                        conn.sendall(view[:size])


async def serve_asyncio_echo(ready_file: Path) -> None:
    """asyncio streams: the same length-prefixed echo."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
                writer.write(await reader.readexactly(size))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=MAX_MESSAGE)
    _write_ready(ready_file, server.sockets[0].getsockname()[1])
    await _serve_until_signal(server.close)


async def serve_grpc_echo(ready_file: Path) -> None:
    """grpc.aio: a generic unary-unary handler that returns its raw request bytes."""
    import grpc

    async def echo(request: bytes, _context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _write_ready(ready_file, port)
    try:
        await _serve_until_signal(lambda: None)
    finally:
        await server.stop(grace=None)


async def _serve_until_signal(close: Callable[[], object]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HELPER_LIFETIME_S)
    finally:
        close()


def serve(kind: str, ready_file: Path) -> None:
    if kind == "tcp":
        serve_tcp_echo(ready_file)
    elif kind == "asyncio":
        asyncio.run(serve_asyncio_echo(ready_file))
    elif kind == "grpc":
        asyncio.run(serve_grpc_echo(ready_file))
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


def _wait_ready(process: subprocess.Popen[bytes], kind: str, ready: Path, log_path: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise SystemExit(f"{kind} echo server exited with {process.returncode}:\n{log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{kind} echo server did not start within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    return int(json.loads(ready.read_text())["port"])


def start_helper(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``--serve KIND`` in a new process; returns it and its port."""
    ready = workdir / f"{kind}-echo.ready.json"
    log_path = workdir / f"{kind}-echo.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", kind, str(ready)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        return process, _wait_ready(process, kind, ready, log_path)
    except BaseException:
        stop_process(process)
        raise


# --- the clients ------------------------------------------------------------------------


class BlockingEcho:
    """Client of ``serve_tcp_echo``."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=READY_TIMEOUT_S)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._view = memoryview(bytearray(MAX_MESSAGE))

    def echo(self, payload: bytes) -> memoryview:
        """Send ``payload``; its echo, in a buffer the next call overwrites."""
        self._sock.sendmsg([LENGTH.pack(len(payload)), payload])
        reply = self._view[: len(payload)]
        if not _recv_exactly(self._sock, reply):
            raise ConnectionError("the tcp echo server closed the connection")
        return reply

    def close(self) -> None:
        self._sock.close()


def one_and_many(
    system: str,
    call: str,
    payload: str,
    fn: Callable[[], Awaitable[object]],
    traffic: Traffic,
    *,
    calls: tuple[int, int],
    depth: int,
) -> tuple[Case, Case]:
    """The same call measured one at a time, then with ``depth`` in flight."""
    one, many = calls
    return (
        Case(system, call, payload, 1, one, run=async_runner(fn, 1), traffic=traffic),
        Case(system, call, payload, depth, many, run=async_runner(fn, depth), traffic=traffic),
    )


async def node_cases(
    stack: contextlib.AsyncExitStack,
    port: int,
    key: bytes,
    inputs: Arrays,
    expected: dict[str, Arrays],
    counts: Counts,
) -> tuple[list[Case], list[Case]]:
    """(one-in-flight cases, many-in-flight cases) through the node."""
    client = await stack.enter_async_context(MeshClient(f"127.0.0.1:{port}", mesh_key=key))
    # The outputs must be the direct ones, or the timings mean nothing.
    for payload, x in inputs.items():
        got = await client.infer(MODEL, {"X": x})
        for name, want in expected[payload].items():
            if not np.array_equal(got[name], want):
                raise SystemExit(f"node output {name!r} for {payload} differs from onnxruntime")
    seq: list[Case] = []
    pipe: list[Case] = []
    for payload, x in inputs.items():
        feeds = {"X": x}

        def infer(feeds: Arrays = feeds) -> Awaitable[object]:
            return client.infer(MODEL, feeds)

        request, reply = infer_wire_bytes(x, expected[payload])
        common = Traffic(x.nbytes, request + reply, counts.warmup(payload))
        depth = WINDOW_LARGE if payload == LARGE else WINDOW_SMALL
        one, many = one_and_many(
            NODE,
            "infer",
            payload,
            infer,
            common,
            calls=(counts.seq(payload), counts.pipe(payload)),
            depth=depth,
        )
        seq.append(one)
        pipe.append(many)

    ping_wire = len(encode_request(1, "ping", [])) + len(encode_response(1, None, "pong"))
    ping_common = Traffic(0, ping_wire, counts.warmup_small)
    one, many = one_and_many(
        NODE,
        "ping",
        "-",
        client.ping,
        ping_common,
        calls=(counts.seq_small, counts.ping_pipe),
        depth=WINDOW_PING,
    )
    seq.append(one)
    pipe.append(many)

    # ping with a 600 KB parameter: the node reads and parses all of it, then
    # refuses it with BadRequest. Transport and framing, no inference.
    blob = inputs[LARGE].tobytes()
    rpc = await stack.enter_async_context(RpcClient("127.0.0.1", port, config=RpcConfig(), key=key))
    refusal = BadRequest("ping takes no parameters, got 1").to_wire()
    blob_wire = len(encode_request(1, "ping", [blob])) + len(encode_response(1, refusal, None))

    async def ping_blob() -> None:
        with contextlib.suppress(BadRequest):
            await rpc.call("ping", [blob])

    blob_common = Traffic(len(blob), blob_wire, counts.warmup_large)
    name = "ping+600KB, refused"
    one, many = one_and_many(
        NODE,
        name,
        LARGE,
        ping_blob,
        blob_common,
        calls=(counts.seq_large, counts.pipe_large),
        depth=WINDOW_LARGE,
    )
    seq.append(one)
    pipe.append(many)
    plain_seq, plain_pipe = await unsealed_cases(stack, port, key, inputs, expected, counts)
    return seq + plain_seq, pipe + plain_pipe


async def unsealed_cases(
    stack: contextlib.AsyncExitStack,
    port: int,
    key: bytes,
    inputs: Arrays,
    expected: dict[str, Arrays],
    counts: Counts,
) -> tuple[list[Case], list[Case]]:
    """The infer cases again, on a connection that does not seal (what sealing costs)."""
    client = await stack.enter_async_context(
        MeshClient(f"127.0.0.1:{port}", mesh_key=key, seal=False)
    )
    seq: list[Case] = []
    pipe: list[Case] = []
    for payload, x in inputs.items():
        if payload not in ("256 B", LARGE):
            continue
        feeds = {"X": x}

        def infer(feeds: Arrays = feeds) -> Awaitable[object]:
            return client.infer(MODEL, feeds)

        request, reply = infer_wire_bytes(x, expected[payload])
        one, many = one_and_many(
            NODE_PLAIN,
            "infer",
            payload,
            infer,
            Traffic(x.nbytes, request + reply, counts.warmup(payload)),
            calls=(counts.seq(payload), counts.pipe(payload)),
            depth=WINDOW_LARGE if payload == LARGE else WINDOW_SMALL,
        )
        seq.append(one)
        pipe.append(many)
    return seq, pipe


def sealing_mb_s(size: int, repeats: int = 5) -> tuple[float, float]:
    """(seal, open) MB/s of the sealing code alone on ``size``-byte frames, in
    this process: the median of ``repeats``. The open side is fed 256 KiB
    chunks, as a socket hands them over."""
    c2s, _ = sealing.derive_keys(secrets.token_bytes(32), b"c" * 32, b"s" * 32, b"")
    sealer = sealing.Sealer("aes-256-gcm", c2s)
    opener = sealing.Opener("aes-256-gcm", c2s, max_plaintext=size)
    payload = secrets.token_bytes(size)
    seal_s: list[float] = []
    open_s: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        header, body = sealer.seal(payload)
        seal_s.append(time.perf_counter() - started)
        frame = header + body
        chunks = [frame[i : i + 256 * 1024] for i in range(0, len(frame), 256 * 1024)]
        started = time.perf_counter()
        for chunk in chunks:
            opener.receive_data(chunk)
        open_s.append(time.perf_counter() - started)
    seal_s.sort()
    open_s.sort()
    return size / seal_s[repeats // 2] / 1e6, size / open_s[repeats // 2] / 1e6


async def grpc_cases(
    stack: contextlib.AsyncExitStack, port: int, inputs: Arrays, counts: Counts
) -> tuple[list[Case], list[Case]]:
    import grpc

    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    channel = await stack.enter_async_context(
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    )
    await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT_S)
    stub = channel.unary_unary(
        GRPC_METHOD, request_serializer=_identity, response_deserializer=_identity
    )
    seq: list[Case] = []
    pipe: list[Case] = []
    for payload, x in inputs.items():
        blob = x.tobytes()
        if await stub(blob) != blob:
            raise SystemExit("the gRPC echo server did not echo")

        def echo(blob: bytes = blob) -> Awaitable[object]:
            return stub(blob)  # type: ignore[no-any-return]

        # Wire bytes: the payload both ways; HTTP/2 and gRPC framing not counted.
        common = Traffic(len(blob), 2 * len(blob), counts.warmup(payload))
        depth = WINDOW_LARGE if payload == LARGE else WINDOW_SMALL
        one, many = one_and_many(
            GRPC,
            "echo",
            payload,
            echo,
            common,
            calls=(counts.seq(payload), counts.pipe(payload)),
            depth=depth,
        )
        seq.append(one)
        pipe.append(many)
    return seq, pipe


async def floor_cases(
    stack: contextlib.AsyncExitStack, tcp_port: int, aio_port: int, inputs: Arrays, counts: Counts
) -> list[Case]:
    blocking = BlockingEcho(tcp_port)
    stack.callback(blocking.close)
    reader, writer = await asyncio.open_connection("127.0.0.1", aio_port, limit=MAX_MESSAGE)
    stack.callback(writer.close)
    cases: list[Case] = []
    for payload, x in inputs.items():
        blob = x.tobytes()
        header = LENGTH.pack(len(blob))
        if bytes(blocking.echo(blob)) != blob:
            raise SystemExit("the tcp echo server did not echo")

        def tcp(blob: bytes = blob) -> object:
            return blocking.echo(blob)

        async def aio(blob: bytes = blob, header: bytes = header) -> bytes:
            writer.writelines([header, blob])
            return await reader.readexactly(len(blob))

        common = Traffic(len(blob), 2 * len(blob), counts.warmup(payload))
        cases.append(
            Case(TCP, "echo", payload, 1, counts.seq(payload), run=sync_runner(tcp), traffic=common)
        )
        cases.append(
            Case(
                AIO,
                "echo",
                payload,
                1,
                counts.seq(payload),
                run=async_runner(aio, 1),
                traffic=common,
            )
        )
    return cases


def ort_cases(
    session: Any,
    inputs: Arrays,
    counts: Counts,
    executor: concurrent.futures.Executor,
    runtime: Runtime,
) -> list[Case]:
    """Direct onnxruntime, then the two in-process costs of keeping the event loop free.

    "run in a thread" is the least any server pays to run inference off its
    event loop (one hand-off to a worker thread and back); "Runtime.infer"
    is the node's own runtime (validation, queueing, workers) without RPC.
    """
    output_names = [o.name for o in session.get_outputs()]
    cases = []
    for payload, x in inputs.items():
        feeds = {"X": x}
        traffic = Traffic(x.nbytes, 0, counts.warmup(payload))

        def direct(feeds: Arrays = feeds) -> object:
            return session.run(output_names, feeds)

        async def in_thread(feeds: Arrays = feeds) -> object:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, session.run, output_names, feeds)

        async def via_runtime(feeds: Arrays = feeds) -> object:
            return await runtime.infer(MODEL, feeds)

        seq = counts.seq(payload)
        cases += [
            Case(ORT, "run", payload, 1, seq, traffic=traffic, run=sync_runner(direct)),
            Case(ORT, "run in a thread", payload, 1, seq, traffic, async_runner(in_thread, 1)),
            Case(ORT, "Runtime.infer", payload, 1, seq, traffic, async_runner(via_runtime, 1)),
        ]
    return cases


async def measure_all(
    ports: dict[str, int],
    key: bytes,
    session: Any,
    inputs: Arrays,
    expected: dict[str, Arrays],
    counts: Counts,
) -> list[Row]:
    async with contextlib.AsyncExitStack() as stack:
        executor = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        runtime = stack.enter_context(
            Runtime(RuntimeConfig(model_names=(MODEL,), per_model_concurrency=1))
        )
        node_seq, node_pipe = await node_cases(stack, ports["node"], key, inputs, expected, counts)
        grpc_seq: list[Case] = []
        grpc_pipe: list[Case] = []
        if "grpc" in ports:
            grpc_seq, grpc_pipe = await grpc_cases(stack, ports["grpc"], inputs, counts)
        floors = await floor_cases(stack, ports["tcp"], ports["asyncio"], inputs, counts)
        local = ort_cases(session, inputs, counts, executor, runtime)
        sequential = [*local, *node_seq, *grpc_seq, *floors]
        print(f"measuring {len(sequential)} one-in-flight cases in {counts.rounds} rounds ...")
        await measure_interleaved(sequential, counts.rounds)
        pipelined = [*node_pipe, *grpc_pipe]
        print(f"measuring {len(pipelined)} many-in-flight cases ...")
        for case in pipelined:
            await measure_once(case)
    order = {ORT: 0, NODE: 1, NODE_PLAIN: 2, GRPC: 3, AIO: 4, TCP: 5}
    cases = sorted(
        [*sequential, *pipelined],
        key=lambda c: (
            order[c.system],
            c.call,
            c.payload != "-",
            list(ROWS).index(c.payload) if c.payload in ROWS else 0,
            c.in_flight,
        ),
    )
    return [to_row(case) for case in cases]


# --- reporting ------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'system':<15} {'call':<19} {'payload':>7} {'in flight':>9} {'calls':>6} "
        f"{'p50 us':>8} {'p99 us':>8} {'calls/s':>9} {'in MB/s':>8} {'wire MB/s':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        in_mb = f"{r.in_mb_s:8.1f}" if r.in_mb_s else f"{'-':>8}"
        wire_mb = f"{r.wire_mb_s:9.1f}" if r.wire_mb_s else f"{'-':>9}"
        print(
            f"{r.system:<15} {r.call:<19} {r.payload:>7} {r.in_flight:>9} {r.calls:>6} "
            f"{r.p50_us:8.1f} {r.p99_us:8.1f} {r.calls_per_s:9,.0f} {in_mb} {wire_mb}"
        )


@dataclass
class Verdict:
    what: str
    measured: str
    goal: str
    verdict: str  # PASS, MISS, or "-" for a figure with no target


def sealing_verdicts(
    find: Callable[..., Row | None], check: Callable[[bool], str]
) -> list[Verdict]:
    """What sealing costs: sealed rows against the same calls unsealed, and the
    sealing code's own speed on big frames."""
    out: list[Verdict] = []
    for payload, in_flight in (("256 B", 1), (LARGE, 1), (LARGE, WINDOW_LARGE)):
        sealed, plain = (
            find(NODE, "infer", payload, in_flight),
            find(NODE_PLAIN, "infer", payload, in_flight),
        )
        if sealed is None or plain is None:
            continue
        if in_flight == 1:
            cost = sealed.p50_us / plain.p50_us - 1
            target = payload == "256 B"
            out.append(
                Verdict(
                    f"sealing's cost, infer p50 sealed / unsealed - 1, {payload}",
                    f"{cost:+.1%}",
                    f"<= {TARGET_SEAL_COST:.0%}" if target else "(info)",
                    check(cost <= TARGET_SEAL_COST) if target else "-",
                )
            )
        else:
            out.append(
                Verdict(
                    f"infer {payload}, {in_flight} in flight: sealed vs unsealed MB/s in",
                    f"{sealed.in_mb_s:,.0f} vs {plain.in_mb_s:,.0f}",
                    "(info)",
                    "-",
                )
            )
    for size in SEAL_FRAME_BYTES:
        seal_mb_s, open_mb_s = sealing_mb_s(size)
        slower = min(seal_mb_s, open_mb_s)
        out.append(
            Verdict(
                f"AES-256-GCM frames of {size / 1e6:.1f} MB: seal / open MB/s",
                f"{seal_mb_s:,.0f} / {open_mb_s:,.0f}",
                f">= {TARGET_SEAL_MB_S:,.0f} MB/s each",
                check(slower >= TARGET_SEAL_MB_S),
            )
        )
    return out


def verdicts(rows: list[Row]) -> list[Verdict]:
    def find(system: str, call: str, payload: str, in_flight: int = 1) -> Row | None:
        for r in rows:
            if (r.system, r.call, r.payload, r.in_flight) == (system, call, payload, in_flight):
                return r
        return None

    def check(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    out: list[Verdict] = []
    for payload in ROWS:
        direct, node = find(ORT, "run", payload), find(NODE, "infer", payload)
        if direct is None or node is None:
            continue
        overhead = node.p50_us - direct.p50_us
        small = payload in SMALL
        out.append(
            Verdict(
                f"node infer p50 - direct ORT p50, {payload}",
                f"{overhead:+.1f} us",
                f"<= {TARGET_OVERHEAD_US:.0f} us" if small else "(none)",
                check(overhead <= TARGET_OVERHEAD_US) if small else "-",
            )
        )
        threaded, runtime = (
            find(ORT, "run in a thread", payload),
            find(ORT, "Runtime.infer", payload),
        )
        if threaded is not None and runtime is not None:
            out += [
                Verdict(
                    f"  of which: a thread hand-off (run in a thread - run), {payload}",
                    f"{threaded.p50_us - direct.p50_us:+.1f} us",
                    "(info)",
                    "-",
                ),
                Verdict(
                    f"  of which: RPC (node infer - Runtime.infer), {payload}",
                    f"{node.p50_us - runtime.p50_us:+.1f} us",
                    "(info)",
                    "-",
                ),
            ]
    out += sealing_verdicts(find, check)
    ping = find(NODE, "ping", "-", WINDOW_PING)
    if ping is not None:
        out.append(
            Verdict(
                f"ping, {WINDOW_PING} in flight on one connection",
                f"{ping.calls_per_s:,.0f} calls/s",
                f">= {TARGET_PING_PER_S:,.0f}/s",
                check(ping.calls_per_s >= TARGET_PING_PER_S),
            )
        )
    for call, label in (("infer", "infer"), ("ping+600KB, refused", "ping+600KB refused (no ORT)")):
        large = find(NODE, call, LARGE, WINDOW_LARGE)
        if large is not None:
            out.append(
                Verdict(
                    f"{label}, {LARGE} in, {WINDOW_LARGE} in flight",
                    f"{large.in_mb_s:,.0f} MB/s in",
                    f">= {TARGET_LARGE_MB_S:,.0f} MB/s",
                    check(large.in_mb_s >= TARGET_LARGE_MB_S),
                )
            )
    for payload in ROWS:
        grpc_row, node = find(GRPC, "echo", payload), find(NODE, "infer", payload)
        if grpc_row is None or node is None:
            continue
        ratio = grpc_row.p50_us / node.p50_us
        out.append(
            Verdict(
                f"gRPC echo p50 / node infer p50, {payload}",
                f"{ratio:.2f}x",
                f">= {TARGET_GRPC_RATIO:.0f}x",
                check(ratio >= TARGET_GRPC_RATIO),
            )
        )
    # Where the time goes: figures with no target.
    grpc_small, node_ping = find(GRPC, "echo", "256 B"), find(NODE, "ping", "-")
    if grpc_small is not None and node_ping is not None:
        out.append(
            Verdict(
                "gRPC echo 256 B p50 / node ping p50",
                f"{grpc_small.p50_us / node_ping.p50_us:.2f}x",
                "(info)",
                "-",
            )
        )
    for payload in ROWS:
        tcp, aio = find(TCP, "echo", payload), find(AIO, "echo", payload)
        direct, node = find(ORT, "run", payload), find(NODE, "infer", payload)
        if tcp is None or aio is None or direct is None or node is None:
            continue
        out.append(
            Verdict(
                f"floor: blocking tcp echo p50, {payload}", f"{tcp.p50_us:.1f} us", "(info)", "-"
            )
        )
        out.append(
            Verdict(f"floor: asyncio echo p50, {payload}", f"{aio.p50_us:.1f} us", "(info)", "-")
        )
        out.append(
            Verdict(
                f"node infer p50 - asyncio echo p50 - ORT p50, {payload}",
                f"{node.p50_us - aio.p50_us - direct.p50_us:+.1f} us",
                "(info)",
                "-",
            )
        )
    return out


def print_verdicts(items: list[Verdict]) -> None:
    width = max(len(v.what) for v in items)
    header = f"{'figure':<{width}}  {'measured':>17}  {'target':>15}  verdict"
    print(header)
    print("-" * len(header))
    for v in items:
        print(f"{v.what:<{width}}  {v.measured:>17}  {v.goal:>15}  {v.verdict}")


# --- main ---------------------------------------------------------------------------------


def run(counts: Counts, json_path: Path | None) -> int:
    started = time.monotonic()
    info = machine(("onnxruntime", "numpy", "msgpack", "grpcio"))
    print(f"edgemesh RPC overhead benchmark: {MODEL}, loopback only")
    print(f"machine: {machine_line(info)}")
    inputs = load_inputs()
    session = direct_session()
    output_names = [o.name for o in session.get_outputs()]
    expected: dict[str, Arrays] = {}
    for payload, x in inputs.items():
        results = session.run(output_names, {"X": x})
        expected[payload] = dict(zip(output_names, results, strict=True))
        request, reply = infer_wire_bytes(x, expected[payload])
        print(f"infer, {payload} input: request {request:,} B, reply {reply:,} B on the wire")

    key = secrets.token_hex(32).encode()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="edgemesh-bench-") as tmp:
        workdir = Path(tmp)
        try:
            ports: dict[str, int] = {}
            node, ports["node"] = start_node_process(
                workdir, name="bench-node", key=key, extra=["--model", MODEL]
            )
            processes.append(node)
            kinds = ["tcp", "asyncio"]
            if importlib.util.find_spec("grpc") is not None:
                kinds.append("grpc")
            else:
                print("grpcio is not installed (pip install -e '.[bench]'): no gRPC baseline")
            for kind in kinds:
                process, ports[kind] = start_helper(kind, workdir)
                processes.append(process)
            rows = asyncio.run(measure_all(ports, key, session, inputs, expected, counts))
        finally:
            for process in reversed(processes):
                stop_process(process)

    print()
    print_table(rows)
    print()
    items = verdicts(rows)
    print_verdicts(items)
    print()
    print(
        "in MB/s: input tensor bytes per second (1 MB = 10^6 B). wire MB/s: request + reply\n"
        "bytes per second (msgpack-RPC as sent; for the echoes the payload both ways, framing\n"
        f"not counted). One-in-flight rows interleaved in {counts.rounds} rounds. "
        f"Run took {time.monotonic() - started:.0f} s."
    )
    if json_path is not None:
        document = {
            "machine": info,
            "counts": asdict(counts),
            "rows": [asdict(r) for r in rows],
            "figures": [asdict(v) for v in items],
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"figures written to {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="RPC overhead of an edgemesh node vs direct onnxruntime and gRPC."
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "READY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve[0], Path(args.serve[1]))
        return 0
    return run_stoppable(lambda: run(Counts.make(args.quick), args.json))


if __name__ == "__main__":
    sys.exit(main())
