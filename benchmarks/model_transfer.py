"""Model transfer throughput: a node pulls a model from a peer, against a plain TCP copy.

Run from the repository root (one benchmark at a time)::

    flock /tmp/edgemesh-bench.lock .venv/bin/python benchmarks/model_transfer.py
    flock /tmp/edgemesh-bench.lock .venv/bin/python benchmarks/model_transfer.py --json out.json

Two files: the bundled ``digits-large`` (205 KiB) and a model generated here,
at run time, in a temporary directory (a 5120 x 5120 float32 MatMul, random
weights, about 100 MiB; never committed). For each, three rounds, each one:

* **mesh pull**: a fresh ``edgemesh node`` process (the puller, with a mesh
  key, mDNS off, ``--peer`` the holder) is told ``model_pull`` and fetches
  the file from the holder process over their mesh link: described, then
  1 MiB chunks with a window of them in flight, written to a temporary file,
  sha256 checked, then installed and loaded. The node reports the copy's
  time (describe, chunks, write, sha256 check) apart from the whole pull
  (which adds the store's own sha256 check, the move and onnxruntime loading).
  Twice: over a sealed link (the default with a key: AEAD on every frame)
  and with the puller started ``--no-seal`` (authenticated, not encrypted);
* **TCP copy**: a helper process sends the same file over one loopback TCP
  connection (asyncio streams, 1 MiB writes, drained), and this process reads
  it with 1 MiB reads into a file: no framing, no checksum, no loading. The
  floor a transfer over loopback could reach with the same tools.

Medians of the three rounds are printed, with each round's value, the
machine and the commit. It asserts nothing: a benchmark is not a test. Every
process it starts is stopped in a ``finally`` block, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from checkout import commit
from machine_info import machine, machine_line
from stoppable import run_stoppable

from mesh.config import bundled_models_dir
from mesh.core.wire.model_transfer import PULL, ModelRef
from mesh.demo.processes import start_node_process, stop_process
from mesh.rpc import RpcClient

ROUNDS = 3
BULK = "bulk"
BULK_SIDE = 5120  # 5120 x 5120 float32 = 100 MiB of weights
READY_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 300.0
MiB = 1024 * 1024

# The TCP copy's sender: serves the file once per connection, exits after
# `count` connections or 15 minutes, whichever comes first.
_SENDER = """
import asyncio, sys
path, count = sys.argv[1], int(sys.argv[2])
async def main():
    served = 0
    done = asyncio.Event()
    async def send(reader, writer):
        nonlocal served
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                writer.write(block)
                await writer.drain()
        writer.close()
        await writer.wait_closed()
        served += 1
        if served >= count:
            done.set()
    server = await asyncio.start_server(send, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        try:
            await asyncio.wait_for(done.wait(), 900)
        except TimeoutError:
            pass
asyncio.run(main())
"""


@dataclass
class Row:
    """One file's figures: each round's seconds."""

    model: str
    size: int
    copy_s: list[float] = field(default_factory=list)
    pull_s: list[float] = field(default_factory=list)
    plain_copy_s: list[float] = field(default_factory=list)
    tcp_s: list[float] = field(default_factory=list)


def make_bulk_model(path: Path) -> None:
    """A ~100 MiB ONNX model: Y = X @ W with random float32 weights (incompressible)."""
    import onnx  # a dev dependency; only this benchmark needs it
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((BULK_SIDE, BULK_SIDE), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        BULK,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, BULK_SIDE])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, BULK_SIDE])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


async def wait_for_offer(port: int, key: bytes, model: str) -> None:
    """Until the node at ``port`` sees a live peer serving ``model``."""
    async with asyncio.timeout(READY_TIMEOUT_S), RpcClient("127.0.0.1", port, key=key) as client:
        while True:
            view = await client.call("models", [{"scope": "mesh"}])
            if any(m["name"] == model and m["where"] == "peer" for m in view["models"]):
                return
            await asyncio.sleep(0.1)


async def pull(port: int, key: bytes, model: str) -> dict[str, Any]:
    async with RpcClient("127.0.0.1", port, key=key) as client:
        report: dict[str, Any] = await client.call(
            PULL, ModelRef(model).to_params(), timeout=PULL_TIMEOUT_S
        )
    return report


def mesh_round(
    work: Path, name: str, holder_port: int, key: bytes, rows: list[Row], *, sealed: bool
) -> None:
    """A fresh puller pulls every model of ``rows`` once."""
    models = work / name
    models.mkdir()
    shutil.copy(bundled_models_dir() / "digits-small.onnx", models)
    extra = ["--no-mdns", "--models", str(models), "--peer", f"127.0.0.1:{holder_port}"]
    if not sealed:
        extra.append("--no-seal")
    process, port = start_node_process(work, name=name, key=key, extra=extra)
    try:
        for row in rows:
            asyncio.run(wait_for_offer(port, key, row.model))
            report = asyncio.run(pull(port, key, row.model))
            if report["source"] is None or report["size"] != row.size:
                raise RuntimeError(f"unexpected pull report: {report}")
            if sealed:
                row.copy_s.append(float(report["transfer_s"]))
                row.pull_s.append(float(report["seconds"]))
            else:
                row.plain_copy_s.append(float(report["transfer_s"]))
    finally:
        stop_process(process)
        shutil.rmtree(models, ignore_errors=True)


async def tcp_copy(port: int, target: Path, size: int) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * MiB)
    got = 0
    with target.open("wb") as handle:
        while block := await reader.read(MiB):
            handle.write(block)
            got += len(block)
    writer.close()
    await writer.wait_closed()
    seconds = time.perf_counter() - started
    if got != size:
        raise RuntimeError(f"TCP copy got {got} of {size} bytes")
    return seconds


def tcp_round(work: Path, sources: dict[str, Path], rows: list[Row]) -> None:
    for row in rows:
        sender = subprocess.Popen(
            [sys.executable, "-c", _SENDER, str(sources[row.model]), "1"],
            stdout=subprocess.PIPE,
        )
        try:
            assert sender.stdout is not None
            port = int(sender.stdout.readline())
            target = work / f"tcp-{row.model}.copy"
            row.tcp_s.append(asyncio.run(tcp_copy(port, target, row.size)))
            target.unlink()
        finally:
            stop_process(sender)


def rate(size: int, seconds: float) -> str:
    return f"{size / MiB / seconds:,.0f}"


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'model':<13} {'size':>10} {'sealed copy s':>14} {'MiB/s':>6} {'pull+load s':>12}"
        f" {'plain copy s':>13} {'MiB/s':>6} {'TCP copy s':>11} {'MiB/s':>6} {'mesh/TCP':>9}"
    )
    print(header)
    for row in rows:
        copy, whole, plain, tcp = (
            statistics.median(v) for v in (row.copy_s, row.pull_s, row.plain_copy_s, row.tcp_s)
        )
        size = f"{row.size / MiB:.1f} MiB" if row.size >= MiB else f"{row.size / 1024:.0f} KiB"
        print(
            f"{row.model:<13} {size:>10} {copy:>14.4f} {rate(row.size, copy):>6}"
            f" {whole:>12.4f} {plain:>13.4f} {rate(row.size, plain):>6}"
            f" {tcp:>11.4f} {rate(row.size, tcp):>6} {tcp / copy:>9.2f}"
        )
    print("\neach round (s): sealed copy | pull+load | plain copy | TCP copy")
    for row in rows:
        print(
            f"  {row.model}: "
            + " | ".join(
                ", ".join(f"{s:.4f}" for s in values)
                for values in (row.copy_s, row.pull_s, row.plain_copy_s, row.tcp_s)
            )
        )


def run(json_path: Path | None, label: str | None) -> int:
    info = machine(["onnxruntime", "msgpack", "numpy", "cryptography"])
    head = label or commit()
    key = secrets.token_hex(32).encode()
    with tempfile.TemporaryDirectory(prefix="edgemesh-transfer-") as temp:
        work = Path(temp)
        holder_models = work / "holder-models"
        holder_models.mkdir()
        shutil.copy(bundled_models_dir() / "digits-large.onnx", holder_models)
        make_bulk_model(holder_models / f"{BULK}.onnx")
        sources = {
            "digits-large": holder_models / "digits-large.onnx",
            BULK: holder_models / f"{BULK}.onnx",
        }
        rows = [Row(name, path.stat().st_size) for name, path in sources.items()]
        extra = ["--no-mdns", "--models", str(holder_models), "--reload-interval", "0"]
        holder, holder_port = start_node_process(work, name="holder", key=key, extra=extra)
        try:
            for round_no in range(ROUNDS):
                mesh_round(work, f"sealed-{round_no}", holder_port, key, rows, sealed=True)
                mesh_round(work, f"plain-{round_no}", holder_port, key, rows, sealed=False)
                tcp_round(work, sources, rows)
        finally:
            stop_process(holder)
    print(f"model transfer over loopback, median of {ROUNDS} rounds; commit {head}")
    print(f"machine: {machine_line(info)}\n")
    print_table(rows)
    print(
        "\ncopy: describe + 1 MiB chunks (window 4) + temp-file writes + sha256 check, over a"
        " sealed link (AEAD) or a --no-seal one; pull+load adds the store's install (sha256"
        " again, move, onnxruntime load). mesh/TCP: TCP copy time / sealed copy time"
        " (1.00 = as fast as a plain TCP copy)."
    )
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {"commit": head, "machine": info, "rows": [asdict(r) for r in rows]}, indent=2
            )
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--commit", help="the commit to print, for a tree exported with git archive (no .git)"
    )
    args = parser.parse_args()
    return run_stoppable(lambda: run(args.json, args.commit))


if __name__ == "__main__":
    sys.exit(main())
