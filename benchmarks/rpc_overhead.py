"""RPC overhead of an edgemesh node, against direct onnxruntime and a gRPC echo (issue 2).

Run from the repository root::

    .venv/bin/python benchmarks/rpc_overhead.py            # full run, about a minute
    .venv/bin/python benchmarks/rpc_overhead.py --quick    # a tenth of the calls
    .venv/bin/python benchmarks/rpc_overhead.py --json out.json

In one run, on this machine, over loopback only, it measures ``digits-small``
(float32 ``[N, 64]`` = 256 B per row; N = 1, 16, 2400 give 256 B, 4 KB and
600 KB inputs, rows from the real held-out ``digits-test.npz``):

* onnxruntime called directly in this process (the node's session options:
  one intra-op thread, spinning off);
* the same inference through a real ``edgemesh node`` process with a mesh key
  (the authenticated path), via :class:`mesh.client.MeshClient`, one call in
  flight (latency) and many in flight on one connection (throughput);
* ``ping`` through the node, one in flight and many in flight;
* ``ping`` carrying a 600 KB parameter, which the node reads, parses and
  refuses with BadRequest: transport and framing of 600 KB, no inference;
* a gRPC (``grpc.aio``) echo server in another process, raw bytes in and out
  (generic handlers, identity serializers, no protobuf), same payload sizes.

It prints a table, then the issue's targets beside the measured figures with
PASS or MISS. It asserts nothing: a benchmark is not a test. Every loop is
bounded by a call count, and the node and the gRPC server are stopped in
``finally`` blocks, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import msgpack
import numpy as np
import onnxruntime as ort

from mesh import __version__ as mesh_version
from mesh.client import MeshClient
from mesh.config import RpcConfig, bundled_models_dir
from mesh.core.codec import encode_tensors
from mesh.core.framing import encode_request, encode_response
from mesh.demo import start_node_process, stop_process
from mesh.errors import BadRequest
from mesh.rpc import RpcClient

MODEL = "digits-small"
ROWS = {"256 B": 1, "4 KB": 16, "600 KB": 2400}
SMALL = ("256 B", "4 KB")
LARGE = "600 KB"
GRPC_METHOD = "/bench.Echo/Echo"
GRPC_MAX_MESSAGE = 64 * 1024 * 1024
# The gRPC echo server exits by itself after this long, even if never stopped.
GRPC_SERVER_LIFETIME_S = 900.0
READY_TIMEOUT_S = 30.0

# Calls in flight on the one connection for the pipelined rows. The node
# refuses more than 1024 concurrent infer calls per connection (Overloaded).
WINDOW_SMALL = 256
WINDOW_PING = 512
WINDOW_LARGE = 8

# Targets from issue 2. Never asserted; printed beside what was measured.
TARGET_OVERHEAD_US = 60.0
TARGET_PING_PER_S = 50_000.0
TARGET_LARGE_MB_S = 1000.0  # 1 GB/s, decimal
TARGET_GRPC_RATIO = 5.0


@dataclass(frozen=True)
class Counts:
    """Measured calls per row (warm-up calls come on top)."""

    seq_small: int
    seq_large: int
    pipe_small: int
    pipe_large: int
    ping_pipe: int
    warmup_small: int
    warmup_large: int

    @classmethod
    def full(cls, divide: int = 1) -> Counts:
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
        )

    def seq(self, payload: str) -> int:
        return self.seq_large if payload == LARGE else self.seq_small

    def pipe(self, payload: str) -> int:
        return self.pipe_large if payload == LARGE else self.pipe_small

    def warmup(self, payload: str) -> int:
        return self.warmup_large if payload == LARGE else self.warmup_small


@dataclass
class Row:
    """One measured configuration."""

    system: str
    call: str
    payload: str
    in_flight: int
    calls: int
    p50_us: float
    p99_us: float
    calls_per_s: float
    # Input tensor bytes per second (the payload, not the wire framing).
    in_mb_s: float
    # Wire bytes both ways per second (requests + replies as sent).
    wire_mb_s: float


@dataclass
class Timing:
    latencies_ns: list[int]
    elapsed_ns: int


def window(payload: str) -> int:
    return WINDOW_LARGE if payload == LARGE else WINDOW_SMALL


def make_row(
    system: str,
    call: str,
    payload: str,
    in_flight: int,
    timing: Timing,
    *,
    in_bytes: int,
    wire_bytes: int,
) -> Row:
    lat = np.asarray(timing.latencies_ns, dtype=np.float64) / 1000.0
    p50, p99 = np.percentile(lat, [50, 99])
    seconds = timing.elapsed_ns / 1e9
    rate = len(lat) / seconds
    return Row(
        system=system,
        call=call,
        payload=payload,
        in_flight=in_flight,
        calls=len(lat),
        p50_us=float(p50),
        p99_us=float(p99),
        calls_per_s=rate,
        in_mb_s=rate * in_bytes / 1e6,
        wire_mb_s=rate * wire_bytes / 1e6,
    )


# --- measuring loops ------------------------------------------------------------


def measure_sync(call: Callable[[], object], calls: int, warmup: int) -> Timing:
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    latencies: list[int] = []
    started = clock()
    for _ in range(calls):
        begin = clock()
        call()
        latencies.append(clock() - begin)
    return Timing(latencies, clock() - started)


async def measure_async(
    call: Callable[[], Awaitable[object]], calls: int, warmup: int, in_flight: int
) -> Timing:
    """``calls`` calls with ``in_flight`` workers each awaiting one call at a time."""
    clock = time.perf_counter_ns
    latencies: list[int] = []

    async def worker(count: int, record: bool) -> None:
        for _ in range(count):
            begin = clock()
            await call()
            if record:
                latencies.append(clock() - begin)

    def shares(total: int) -> list[int]:
        workers = max(1, min(in_flight, total))
        base, extra = divmod(total, workers)
        return [base + (1 if i < extra else 0) for i in range(workers)]

    await asyncio.gather(*(worker(k, False) for k in shares(warmup)))
    started = clock()
    await asyncio.gather(*(worker(k, True) for k in shares(calls)))
    return Timing(latencies, clock() - started)


# --- the data and direct onnxruntime ---------------------------------------------


def load_inputs() -> dict[str, np.ndarray[Any, Any]]:
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


def wire_sizes(
    x: np.ndarray[Any, Any], outputs: dict[str, np.ndarray[Any, Any]]
) -> tuple[int, int]:
    """Bytes of one infer request and its reply as MeshClient and the node send them."""
    params = [MODEL, encode_tensors({"X": x}), {"request_id": secrets.token_hex(16)}]
    request = encode_request(12345, "infer", params)
    reply = encode_response(12345, None, encode_tensors(outputs))
    return len(request), len(reply)


# --- the node ---------------------------------------------------------------------


async def node_phase(
    port: int,
    key: bytes,
    inputs: dict[str, np.ndarray[Any, Any]],
    expected: dict[str, dict[str, np.ndarray[Any, Any]]],
    wire: dict[str, tuple[int, int]],
    counts: Counts,
) -> list[Row]:
    rows: list[Row] = []
    address = f"127.0.0.1:{port}"
    async with MeshClient(address, mesh_key=key) as client:
        # The outputs must be the direct ones, or the timings mean nothing.
        for payload, x in inputs.items():
            got = await client.infer(MODEL, {"X": x})
            for name, want in expected[payload].items():
                if not np.array_equal(got[name], want):
                    raise SystemExit(f"node output {name!r} for {payload} differs from onnxruntime")

        for payload, x in inputs.items():
            feeds = {"X": x}

            def infer(feeds: dict[str, np.ndarray[Any, Any]] = feeds) -> Awaitable[object]:
                return client.infer(MODEL, feeds)

            sizes = {"in_bytes": x.nbytes, "wire_bytes": sum(wire[payload])}
            timing = await measure_async(infer, counts.seq(payload), counts.warmup(payload), 1)
            rows.append(make_row("edgemesh node", "infer", payload, 1, timing, **sizes))
            depth = window(payload)
            timing = await measure_async(infer, counts.pipe(payload), counts.warmup(payload), depth)
            rows.append(make_row("edgemesh node", "infer", payload, depth, timing, **sizes))

        ping_wire = len(encode_request(1, "ping", [])) + len(encode_response(1, None, "pong"))
        timing = await measure_async(client.ping, counts.seq_small, counts.warmup_small, 1)
        rows.append(make_row("edgemesh node", "ping", "-", 1, timing, in_bytes=0, wire_bytes=0))
        timing = await measure_async(
            client.ping, counts.ping_pipe, counts.warmup_small, WINDOW_PING
        )
        rows.append(
            make_row(
                "edgemesh node", "ping", "-", WINDOW_PING, timing, in_bytes=0, wire_bytes=ping_wire
            )
        )

    # ping with a 600 KB parameter: the node reads and parses all of it, then
    # refuses it with BadRequest. Transport and framing, no inference.
    blob = inputs[LARGE].tobytes()
    refused = len(encode_request(1, "ping", [blob]))
    refused += len(
        encode_response(1, BadRequest("ping takes no parameters, got 1").to_wire(), None)
    )
    rpc = RpcClient("127.0.0.1", port, config=RpcConfig(), key=key)
    async with rpc:

        async def ping_blob() -> None:
            with contextlib.suppress(BadRequest):
                await rpc.call("ping", [blob])

        sizes = {"in_bytes": len(blob), "wire_bytes": refused}
        timing = await measure_async(ping_blob, counts.seq_large, counts.warmup_large, 1)
        rows.append(make_row("edgemesh node", "ping+600KB refused", LARGE, 1, timing, **sizes))
        timing = await measure_async(
            ping_blob, counts.pipe_large, counts.warmup_large, WINDOW_LARGE
        )
        rows.append(
            make_row("edgemesh node", "ping+600KB refused", LARGE, WINDOW_LARGE, timing, **sizes)
        )
    return rows


# --- the gRPC baseline ---------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


async def serve_grpc_echo(ready_file: Path) -> None:
    """The gRPC echo server (run in its own process by ``--grpc-server``)."""
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
            ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
            ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    temporary = ready_file.with_suffix(".tmp")
    temporary.write_text(json.dumps({"port": port}))
    temporary.replace(ready_file)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), GRPC_SERVER_LIFETIME_S)
    finally:
        await server.stop(grace=None)


def start_grpc_server(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready = workdir / "grpc-echo.ready.json"
    log_path = workdir / "grpc-echo.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--grpc-server", str(ready)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None:
            raise SystemExit(
                f"gRPC echo server exited with {process.returncode}:\n"
                + log_path.read_text(errors="replace")
            )
        if time.monotonic() > deadline:
            stop_process(process)
            raise SystemExit(f"gRPC echo server did not start within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.05)
    return process, int(json.loads(ready.read_text())["port"])


async def grpc_phase(
    port: int, inputs: dict[str, np.ndarray[Any, Any]], counts: Counts
) -> list[Row]:
    import grpc

    rows: list[Row] = []
    options = [
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT_S)
        stub = channel.unary_unary(
            GRPC_METHOD, request_serializer=_identity, response_deserializer=_identity
        )
        for payload, x in inputs.items():
            blob = x.tobytes()
            if await stub(blob) != blob:
                raise SystemExit("the gRPC echo server did not echo")

            def echo(blob: bytes = blob) -> Awaitable[object]:
                return stub(blob)  # type: ignore[no-any-return]

            # Wire bytes: payload both ways; HTTP/2 and gRPC framing not counted.
            sizes = {"in_bytes": len(blob), "wire_bytes": 2 * len(blob)}
            timing = await measure_async(echo, counts.seq(payload), counts.warmup(payload), 1)
            rows.append(make_row("grpc.aio echo", "echo", payload, 1, timing, **sizes))
            depth = window(payload)
            timing = await measure_async(echo, counts.pipe(payload), counts.warmup(payload), depth)
            rows.append(make_row("grpc.aio echo", "echo", payload, depth, timing, **sizes))
    return rows


# --- reporting ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "edgemesh": mesh_version,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "grpcio": version("grpcio"),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu']}, {info['usable_cores']} cores usable of {info['cores']}, "
        f"Linux {info['kernel']}; Python {info['python']}, edgemesh {info['edgemesh']}, "
        f"onnxruntime {info['onnxruntime']}, numpy {info['numpy']}, "
        f"msgpack {info['msgpack']}, grpcio {info['grpcio']}"
    )


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
    target: str
    verdict: str  # PASS, MISS or "-" (no target)


def verdicts(rows: list[Row]) -> list[Verdict]:
    def find(system: str, call: str, payload: str, in_flight: int) -> Row | None:
        for r in rows:
            if (r.system, r.call, r.payload, r.in_flight) == (system, call, payload, in_flight):
                return r
        return None

    out: list[Verdict] = []
    for payload in ROWS:
        direct = find("onnxruntime", "run", payload, 1)
        node = find("edgemesh node", "infer", payload, 1)
        if direct is None or node is None:
            continue
        overhead = node.p50_us - direct.p50_us
        small = payload in SMALL
        out.append(
            Verdict(
                f"node infer overhead over direct ORT, p50, {payload}",
                f"{overhead:+.1f} us",
                f"<= {TARGET_OVERHEAD_US:.0f} us" if small else "(none for large)",
                ("PASS" if overhead <= TARGET_OVERHEAD_US else "MISS") if small else "-",
            )
        )
    ping = find("edgemesh node", "ping", "-", WINDOW_PING)
    if ping is not None:
        out.append(
            Verdict(
                f"ping, {WINDOW_PING} in flight on one connection",
                f"{ping.calls_per_s:,.0f} calls/s",
                f">= {TARGET_PING_PER_S:,.0f} calls/s",
                "PASS" if ping.calls_per_s >= TARGET_PING_PER_S else "MISS",
            )
        )
    for call, label in (("infer", "infer"), ("ping+600KB refused", "ping+600KB refused (no ORT)")):
        large = find("edgemesh node", call, LARGE, WINDOW_LARGE)
        if large is not None:
            out.append(
                Verdict(
                    f"{label}, {LARGE} input, {WINDOW_LARGE} in flight",
                    f"{large.in_mb_s:,.0f} MB/s in",
                    f">= {TARGET_LARGE_MB_S:,.0f} MB/s",
                    "PASS" if large.in_mb_s >= TARGET_LARGE_MB_S else "MISS",
                )
            )
    for payload in ROWS:
        grpc_row = find("grpc.aio echo", "echo", payload, 1)
        node = find("edgemesh node", "infer", payload, 1)
        if grpc_row is None or node is None:
            continue
        ratio = grpc_row.p50_us / node.p50_us
        out.append(
            Verdict(
                f"gRPC echo p50 / node infer p50, {payload}",
                f"{ratio:.2f}x",
                f">= {TARGET_GRPC_RATIO:.0f}x",
                "PASS" if ratio >= TARGET_GRPC_RATIO else "MISS",
            )
        )
    grpc_small = find("grpc.aio echo", "echo", "256 B", 1)
    node_ping = find("edgemesh node", "ping", "-", 1)
    if grpc_small is not None and node_ping is not None:
        out.append(
            Verdict(
                "gRPC echo 256 B p50 / node ping p50 (transport only)",
                f"{grpc_small.p50_us / node_ping.p50_us:.2f}x",
                "(info)",
                "-",
            )
        )
    return out


def print_verdicts(items: list[Verdict]) -> None:
    width = max(len(v.what) for v in items)
    header = f"{'target':<{width}}  {'measured':>18}  {'goal':>16}  verdict"
    print(header)
    print("-" * len(header))
    for v in items:
        print(f"{v.what:<{width}}  {v.measured:>18}  {v.target:>16}  {v.verdict}")


# --- main ---------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(counts: Counts, json_path: Path | None) -> int:
    info = machine()
    print(f"edgemesh RPC overhead benchmark: {MODEL}, loopback only")
    print(f"machine: {machine_line(info)}")
    print()
    grpc_available = importlib.util.find_spec("grpc") is not None

    inputs = load_inputs()
    session = direct_session()
    expected: dict[str, dict[str, np.ndarray[Any, Any]]] = {}
    wire: dict[str, tuple[int, int]] = {}
    output_names = [o.name for o in session.get_outputs()]
    rows: list[Row] = []
    for payload, x in inputs.items():
        feeds = {"X": x}
        results = session.run(output_names, feeds)
        expected[payload] = dict(zip(output_names, results, strict=True))
        wire[payload] = wire_sizes(x, expected[payload])

        def direct(feeds: dict[str, np.ndarray[Any, Any]] = feeds) -> object:
            return session.run(output_names, feeds)

        timing = measure_sync(direct, counts.seq(payload), counts.warmup(payload))
        rows.append(
            make_row("onnxruntime", "run", payload, 1, timing, in_bytes=x.nbytes, wire_bytes=0)
        )
    for payload, (request, reply) in wire.items():
        print(f"wire bytes per infer, {payload} input: request {request:,} B, reply {reply:,} B")

    key = secrets.token_hex(32).encode()
    with tempfile.TemporaryDirectory(prefix="edgemesh-bench-") as workdir:
        node, port = start_node_process(
            Path(workdir), name="bench-node", key=key, extra=["--model", MODEL]
        )
        try:
            rows += asyncio.run(node_phase(port, key, inputs, expected, wire, counts))
        finally:
            stop_process(node)
        if grpc_available:
            server, grpc_port = start_grpc_server(Path(workdir))
            try:
                rows += asyncio.run(grpc_phase(grpc_port, inputs, counts))
            finally:
                stop_process(server)
        else:
            print("grpcio is not installed (pip install -e '.[bench]'): no gRPC baseline")

    print()
    print_table(rows)
    print()
    items = verdicts(rows)
    print_verdicts(items)
    print()
    print(
        "in MB/s: input tensor bytes per second (1 MB = 10^6 B). wire MB/s: msgpack-RPC "
        "request + reply bytes per second (gRPC: payload both ways, framing not counted)."
    )
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "machine": info,
                    "counts": asdict(counts),
                    "rows": [asdict(r) for r in rows],
                    "targets": [asdict(v) for v in items],
                },
                indent=2,
            )
            + "\n"
        )
        print(f"figures written to {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--grpc-server", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.grpc_server is not None:
        asyncio.run(serve_grpc_echo(args.grpc_server))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(Counts.full(10 if args.quick else 1), args.json)
    except KeyboardInterrupt:
        print("interrupted; the node and the gRPC server were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
