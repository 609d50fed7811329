"""Joint inference on the held-out digits: accuracy, share escalated, latency (issue 15).

Run from the repository root (one benchmark at a time, under the shared lock)::

    flock /tmp/edgemesh-bench.lock .venv/bin/python benchmarks/escalation.py            # ~2 min
    flock /tmp/edgemesh-bench.lock .venv/bin/python benchmarks/escalation.py --runs 1 --samples 100

The fleet, on 127.0.0.1 as a user would start it: one ``edgemesh gateway``
serving ``digits-large`` and one ``edgemesh node`` serving ``digits-small``
with ``--gateway`` set to it and ``--escalate digits-small=digits-large@0.8``
(mDNS off). **Emulated WAN:** the gateway pads every call to
``--gateway-ms`` (default 40 ms), standing for the round trip to a cloud
region and its service time; loopback alone has neither. Every table says so.

For each threshold of the sweep, every one of the ``--samples`` held-out
digits (``models/digits-test.npz``, never seen in training) is sent alone,
one after another, through the SDK (``MeshClient.infer`` with
``escalate_threshold``); threshold 0 is the edge alone. The cloud-only row
asks the same node for ``digits-large``, which it does not hold, so each
request goes to the gateway. Per row: accuracy, the share of requests
escalated (the answer's ``escalated``), and the mean and p95 latency seen by
the client. Accuracy and shares are the same on every run; latencies are
the median over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import machine, machine_line
from stoppable import run_stoppable

from mesh.config import bundled_models_dir
from mesh.demo.processes import start_gateway_process, start_node_process, stop_process
from mesh.sdk.client import MeshClient

THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
CLOUD = "cloud only"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs; latencies are the median")
    parser.add_argument("--samples", type=int, default=450, help="held-out digits per row")
    parser.add_argument(
        "--gateway-ms", type=float, default=40.0, help="emulated cloud time per gateway call"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


async def sweep(port: int, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> dict[str, Any]:
    """One run: every threshold, then cloud only; per row the answers' figures."""
    rows: dict[str, Any] = {}
    async with MeshClient(f"127.0.0.1:{port}") as client:
        # One warm-up call per path, so no row pays for a first connection.
        await client.infer("digits-small", {"X": x[:1]}, escalate_threshold=1.01)
        for threshold in (*THRESHOLDS, CLOUD):
            correct = escalated = 0
            took: list[float] = []
            for i in range(len(x)):
                started = time.perf_counter()
                if isinstance(threshold, str):  # CLOUD
                    out = await client.infer("digits-large", {"X": x[i : i + 1]})
                else:
                    out = await client.infer(
                        "digits-small", {"X": x[i : i + 1]}, escalate_threshold=threshold
                    )
                    escalated += bool(out.escalated)
                took.append(time.perf_counter() - started)
                correct += int(out["label"][0] == y[i])
            rows[str(threshold)] = {
                "accuracy": correct / len(x),
                "escalated": escalated / len(x) if threshold != CLOUD else 1.0,
                "mean_ms": statistics.fmean(took) * 1000,
                "p95_ms": float(np.percentile(took, 95)) * 1000,
            }
    return rows


def run(args: argparse.Namespace) -> int:
    data = np.load(bundled_models_dir() / "digits-test.npz")
    x = data["X"][: args.samples].astype(np.float32)
    y = data["y"][: args.samples]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgemesh-escalation-") as tmp:
        work = Path(tmp)
        gateway, gw_port = start_gateway_process(
            work,
            extra=["--model", "digits-large", "--emulate-service-ms", str(args.gateway_ms)],
        )
        node = None
        try:
            node, port = start_node_process(
                work,
                name="edge",
                key=None,
                extra=[
                    "--no-mdns",
                    "--model",
                    "digits-small",
                    "--gateway",
                    f"http://127.0.0.1:{gw_port}",
                    "--escalate",
                    "digits-small=digits-large@0.8",
                ],
            )
            for index in range(args.runs):
                runs.append(asyncio.run(sweep(port, x, y)))
                print(f"run {index + 1} of {args.runs} done", file=sys.stderr)
        finally:
            if node is not None:
                stop_process(node)
            stop_process(gateway)
    table = summarise(runs)
    info = machine(["onnxruntime", "numpy"])
    print(report(table, args, info, commit))
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": info, "commit": commit, "runs": runs}))
    return 0


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per row: accuracy and share as measured (the same each run), latencies' medians."""
    table = {}
    for key in runs[0]:
        cells = [r[key] for r in runs]
        table[key] = {
            "accuracy": cells[0]["accuracy"],
            "escalated": cells[0]["escalated"],
            "mean_ms": statistics.median(c["mean_ms"] for c in cells),
            "p95_ms": statistics.median(c["p95_ms"] for c in cells),
        }
    return table


def report(
    table: dict[str, dict[str, float]], args: argparse.Namespace, info: dict[str, Any], commit: str
) -> str:
    cloud = table[CLOUD]
    lines = [
        f"Joint inference, digits-small -> digits-large, {args.samples} held-out digits,"
        f" one row a request; median of {args.runs} runs; commit {commit}",
        f"Machine: {machine_line(info)}",
        f"Gateway calls padded to {args.gateway_ms:g} ms (emulated WAN round trip + cloud).",
        "",
        "| threshold | accuracy | escalated | mean latency | p95 latency | mean vs cloud only |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in table.items():
        label = "edge only (0)" if key == "0.0" else key
        lines.append(
            f"| {label} | {row['accuracy']:.4f} | {row['escalated']:.1%} |"
            f" {row['mean_ms']:.1f} ms | {row['p95_ms']:.1f} ms |"
            f" {row['mean_ms'] / cloud['mean_ms']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_stoppable(lambda: run(parse_args())))
