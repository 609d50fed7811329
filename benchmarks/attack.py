"""Attacks on a keyed node (issue 19): connection storms, fuzzed RPC frames, fuzzed HTTP bodies.

Run from the repository root::

    .venv/bin/python benchmarks/attack.py               # 10 x 3,000 storm, 100k frames, 10k bodies
    .venv/bin/python benchmarks/attack.py --quick       # a tenth of each
    .venv/bin/python benchmarks/attack.py --before DIR  # also storm the checkout in DIR (say,
                                                        # an older commit's `git archive`)
    .venv/bin/python benchmarks/attack.py --json out.json

One real ``edgemesh node`` process on 127.0.0.1 with a fresh mesh key and an
HTTP port, serving digits-small. Three phases, each against a fresh node:

* **storm**: ``--rounds`` rounds of ``--connections`` connections, at most
  ``--concurrency`` open at once, each saying ``hello`` (half of them
  finishing the handshake) and closing; the node's RSS after each round. With
  ``--before DIR`` the same storm runs first against a node started from the
  ``mesh`` package in DIR, so the curves come from one run; a last row,
  ``uncapped``, lifts this node's caps on connections waiting for their
  handshake, to show what its buffers alone do.
* **rpc fuzz**: ``--frames`` msgpack-RPC frames, half on connections that
  passed the handshake (the version-1 hello: plain frames), half on
  strangers' connections: valid calls (10 %), well-formed messages with
  random contents (50 %), byte-level mutations of them (30 %: flipped bits,
  cuts, insertions, length fields declaring gigabytes), random bytes (10 %).
  Counted: results, typed errors by code (answers, and the error notice sent
  before a close), closes. This node's failed-handshake rate limit is raised,
  so that the strangers' failures do not lock the fuzzer itself out.
* **http fuzz**: ``--bodies`` POSTs to ``/v2/models/digits-small/infer`` over
  one keep-alive session: valid, mutated JSON, binary-extension bodies with a
  wrong header length, random bytes. Counted: statuses, error codes, error
  bodies without a code (should be none), and 500s (a bug each).

After each phase: whether the node still answers (a ``ping`` after the
handshake, ``/v2/health/live``) and its RSS. Every loop is bounded by a
count, every process is stopped in a ``finally`` block (Ctrl-C too), and
nothing leaves loopback. It asserts nothing: a benchmark is not a test.
Run it under ``flock /tmp/edgemesh-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from checkout import commit
from machine_info import machine, machine_line
from stoppable import run_stoppable

# The attack tools live with the test helpers, which the suite's short twin
# (tests/security/test_fuzz_attack.py) uses too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.attack import (
    LENIENT,
    Target,
    alive,
    fuzz_http,
    fuzz_rpc,
    start_target,
    stop_target,
    storm,
)

_MIB = 2**20
UNCAPPED = {
    "EDGEMESH_MAX_UNAUTHENTICATED": "100000",
    "EDGEMESH_MAX_UNAUTHENTICATED_PER_SOURCE": "100000",
}


async def _settled_rss(target: Target) -> int:
    await asyncio.sleep(1.0)  # closes processed, the allocator's frees done
    return target.rss


async def storm_phase(
    workdir: Path,
    args: argparse.Namespace,
    source: Path | None,
    label: str,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    target = start_target(workdir, source=source, name=f"storm-{label}", environ=environ)
    try:
        baseline = await _settled_rss(target)
        print(f"storm [{label}]: RSS {baseline / _MIB:.0f} MiB at start", flush=True)
        rounds = []
        for index in range(args.rounds):
            started = time.monotonic()
            answered = await storm(
                target.rpc_port, target.key, connections=args.connections,
                concurrency=args.concurrency,
            )  # fmt: skip
            rss = await _settled_rss(target)
            rounds.append({"round": index + 1, "answered": answered, "rss_mib": rss / _MIB,
                           "seconds": time.monotonic() - started})  # fmt: skip
            print(
                f"  round {index + 1:>2}: {answered:>5} of {args.connections} answered, "
                f"RSS {rss / _MIB:6.1f} MiB", flush=True,
            )  # fmt: skip
        up = await alive(target)
    finally:
        stop_target(target)
    return {"label": label, "baseline_mib": baseline / _MIB, "rounds": rounds, "alive": up}


async def rpc_phase(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    target = start_target(workdir, name="rpc-fuzz", environ=LENIENT)
    try:
        before = await _settled_rss(target)
        started = time.monotonic()
        tally = await fuzz_rpc(target.rpc_port, target.key, frames=args.frames, seed=args.seed)
        seconds = time.monotonic() - started
        after = await _settled_rss(target)
        up = await alive(target)
    finally:
        stop_target(target)
    return {
        "frames": tally.frames, "connections": tally.connections, "results": tally.results,
        "closes": tally.closes, "errors": dict(tally.errors.most_common()),
        "rss_before_mib": before / _MIB, "rss_after_mib": after / _MIB,
        "seconds": seconds, "alive": up,
    }  # fmt: skip


async def http_phase(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    target = start_target(workdir, name="http-fuzz", environ=LENIENT)
    try:
        before = await _settled_rss(target)
        started = time.monotonic()
        tally = await fuzz_http(target.http_port, bodies=args.bodies, seed=args.seed)
        seconds = time.monotonic() - started
        after = await _settled_rss(target)
        up = await alive(target)
    finally:
        stop_target(target)
    return {
        "bodies": tally.bodies, "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "codes": dict(tally.codes.most_common()), "untyped": tally.untyped,
        "rss_before_mib": before / _MIB, "rss_after_mib": after / _MIB,
        "seconds": seconds, "alive": up,
    }  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    print()
    print(machine_line(report["machine"]))
    print(f"commit {report['commit']}")
    storms = report["storm"]
    print()
    print(
        f"storm: {report['args']['rounds']} rounds x {report['args']['connections']} "
        f"connections ({report['args']['concurrency']} at once), RSS MiB after each round"
    )
    print(
        f"{'':>10} {'start':>6} "
        + " ".join(f"{i + 1:>6}" for i in range(len(storms[0]["rounds"])))
        + "  up"
    )
    for run in storms:
        cells = " ".join(f"{r['rss_mib']:>6.1f}" for r in run["rounds"])
        up = "yes" if run["alive"] else "NO"
        print(f"{run['label']:>10} {run['baseline_mib']:>6.1f} {cells}  {up}")
    rpc = report["rpc"]
    print()
    print(
        f"rpc fuzz: {rpc['frames']} frames on {rpc['connections']} connections in "
        f"{rpc['seconds']:.0f} s; {rpc['results']} results, {sum(rpc['errors'].values())} typed "
        f"errors, {rpc['closes']} closes; RSS {rpc['rss_before_mib']:.1f} -> "
        f"{rpc['rss_after_mib']:.1f} MiB; node up: {'yes' if rpc['alive'] else 'NO'}"
    )
    for code, count in rpc["errors"].items():
        print(f"  {code}: {count}")
    http = report["http"]
    print()
    print(
        f"http fuzz: {http['bodies']} bodies in {http['seconds']:.0f} s; statuses "
        f"{http['statuses']}; untyped error bodies {http['untyped']}; RSS "
        f"{http['rss_before_mib']:.1f} -> {http['rss_after_mib']:.1f} MiB; node up: "
        f"{'yes' if http['alive'] else 'NO'}"
    )
    for code, count in http["codes"].items():
        print(f"  {code}: {count}")


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgemesh-attack-") as tmp:
        workdir = Path(tmp)
        storms = []
        if args.before is not None:
            storms.append(await storm_phase(workdir, args, args.before, "before"))
        storms.append(await storm_phase(workdir, args, None, "this"))
        # The buffers alone: this node with the caps on waiting connections lifted.
        storms.append(await storm_phase(workdir, args, None, "uncapped", UNCAPPED))
        rpc = await rpc_phase(workdir, args)
        http = await http_phase(workdir, args)
    return {
        "machine": machine(["msgpack", "aiohttp", "cryptography"]),
        "commit": commit(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "storm": storms, "rpc": rpc, "http": http,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--bodies", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--quick", action="store_true", help="a tenth of each count")
    parser.add_argument("--before", type=Path, help="a checkout whose node to storm first")
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args()
    if args.quick:
        args.connections //= 10
        args.frames //= 10
        args.bodies //= 10

    def run() -> int:
        report = asyncio.run(run_all(args))
        print_report(report)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2, default=str))
        return 0

    return run_stoppable(run)


if __name__ == "__main__":
    sys.exit(main())
