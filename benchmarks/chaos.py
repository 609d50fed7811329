"""Chaos under load (issue 18): node processes killed, terminated and frozen on a schedule.

Run from the repository root::

    .venv/bin/python benchmarks/chaos.py                       # 60 s, 4 nodes, a fault every 5 s
    .venv/bin/python benchmarks/chaos.py --duration 20 --nodes 3 --faults kill,stop
    .venv/bin/python benchmarks/chaos.py --discovery mdns --seed 7 --json out.json --logs logs/

``--nodes`` real ``edgemesh node`` processes on 127.0.0.1, one fresh mesh
key, each an **emulated** one-slot device (``--emulate-speed`` 1, 1, 2, 4
repeated, ``--emulate-service-ms`` 20: the real model runs on the real
input, then the call is padded to ``MS / speed``), found through ``--peer``
with mDNS off (``--discovery peer``) or through mDNS bound to 127.0.0.1
(``--discovery mdns``). One client (the SDK's ``MeshClient``, given every
node's address, in this process) sends ``--rate`` requests per second,
open loop, each a held-out digit whose right answer onnxruntime gives
here. Every ``--every`` seconds one node (drawn with ``--seed``; every
``--entry-every``-th fault, the node the client is using) is SIGKILLed
(restarted ``--restart-after`` s later under its name and port),
SIGTERMed (the same, once it exited) or SIGSTOPped for ``--stop-for`` s.

The table: requests sent, ok, wrong (an answer that is not onnxruntime's),
lost (no answer and no error by the end plus ``--grace``), doubled (more
than one outcome for one request id at the client), errors by code; then
per fault its detection time (from the signal until the first survivor,
and until every survivor, of those that saw the node alive when the fault
began, reported it dead in its ``status()``, polled every 0.1 s: upper
bounds within one poll) and recovery time (until
the throughput of ok answers was back at 80 % of its level over the 3 s
before the fault, in 0.5 s bins, for the rest of that fault's interval).
The driver is ``tests/helpers/chaos.py``, shared with the suite's short
twin ``tests/system/test_chaos.py``.

Not here: network partitions (``--netns``). The nodes would have to run in
namespaces and the client with them in one (the host has no route to a
lab's bridge), so the client would become a process inside a namespace
reporting over a file; ``tests/system/test_netns.py`` covers a pulled
cable instead.

It stops by itself (bounded by ``--duration`` plus ``--grace`` plus
start-up), every process it started is stopped in a ``finally`` block, on
Ctrl-C too, and nothing leaves loopback. It asserts nothing: a benchmark is
not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from checkout import commit
from machine_info import machine, machine_line
from stoppable import run_stoppable

# The chaos driver lives with the test helpers, which its short twin in the
# suite uses too; the repository root makes `tests.helpers` importable
# however this script is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers.chaos import FAULT_KINDS, ChaosConfig, ChaosResult, run_chaos


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_result(result: ChaosResult) -> None:
    config = result.config
    load_s = max(1e-9, result.load_stopped - result.started)
    print(
        f"{'sent':>7} {'ok':>7} {'wrong':>6} {'lost':>5} {'doubled':>7} {'errors':>6}"
        f" {'req/s':>6} {'faults':>6}"
    )
    errors = result.errors
    print(
        f"{result.sent:>7} {result.count('ok'):>7} {result.count('wrong'):>6} {result.lost:>5}"
        f" {result.doubled:>7} {sum(errors.values()):>6} {result.sent / load_s:>6.0f}"
        f" {len(result.faults):>6}"
    )
    examples = result.error_examples()
    for code, count in errors.most_common():
        print(f"  error {code}: {count}  e.g. {examples[code][:160]!r}")
    print()
    print(
        f"{'#':>2} {'t s':>5} {'fault':<5} {'node':<4} {'speed':>5} {'exit s':>6} {'rc':>4}"
        f" {'entry':>5} {'detect first':>12} {'detect all':>10} {'back s':>6} {'recover s':>9}"
        "  note"
    )
    for index, fault in enumerate(result.faults, 1):
        back = None if fault.over is None else fault.over - fault.at
        rc = "-" if fault.exit_code is None else str(fault.exit_code)
        speed = config.speed(config.names.index(fault.node))
        print(
            f"{index:>2} {fault.at - result.started:>5.1f} {fault.kind:<5} {fault.node:<4}"
            f" {speed:>5g} {_seconds(fault.exit_s):>6} {rc:>4} {'yes' if fault.entry else '':>5}"
            f" {_seconds(fault.detect_first_s):>12} {_seconds(fault.detect_all_s):>10}"
            f" {_seconds(back):>6} {_seconds(fault.recover_s):>9}  {fault.note}"
        )
    for kind in FAULT_KINDS:
        faults = [f for f in result.faults if f.kind == kind]
        detect = [f.detect_all_s for f in faults if f.detect_all_s is not None]
        recover = [f.recover_s for f in faults if f.recover_s is not None]
        if faults:
            print(
                f"  {kind}: {len(faults)} faults; detect (all survivors) median"
                f" {_median(detect)} s, recover median {_median(recover)} s"
            )
    for note in result.notes:
        print(f"  note: {note}")


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def to_json(result: ChaosResult, info: dict[str, Any], head: str) -> dict[str, Any]:
    return {
        "machine": info,
        "commit": head,
        "config": asdict(result.config),
        "sent": result.sent,
        "ok": result.count("ok"),
        "wrong": result.count("wrong"),
        "lost": result.lost,
        "doubled": result.doubled,
        "errors": dict(result.errors),
        "faults": [
            {
                "kind": f.kind,
                "node": f.node,
                "entry": f.entry,
                "t_s": f.at - result.started,
                "exit_s": f.exit_s,
                "exit_code": f.exit_code,
                "detect_first_s": f.detect_first_s,
                "detect_all_s": f.detect_all_s,
                "recover_s": f.recover_s,
                "note": f.note,
            }
            for f in result.faults
        ],
        "notes": result.notes,
        # Every request: [sent, answered or null] in s from the start, and its outcome.
        "calls": [
            [
                round(c.sent - result.started, 4),
                None if c.done is None else round(c.done - result.started, 4),
                c.outcome,
            ]
            for c in result.calls
        ],
    }


def run(args: argparse.Namespace) -> int:
    config = ChaosConfig(
        nodes=args.nodes,
        speeds=args.speeds,
        service_ms=args.service_ms,
        rate=args.rate,
        duration_s=args.duration,
        fault_every_s=args.every,
        faults=args.faults,
        restart_after_s=args.restart_after,
        stop_for_s=args.stop_for,
        deadline_s=args.deadline,
        grace_s=args.grace,
        seed=args.seed,
        entry_every=args.entry_every,
        discovery=args.discovery,
    )
    info = machine(("onnxruntime", "msgpack", "zeroconf"))
    head = commit()
    speeds = ", ".join(f"{config.speed(i):g}" for i in range(config.nodes))
    print("edgemesh chaos benchmark: real node processes on 127.0.0.1 under faults and load")
    print(f"Machine: {machine_line(info)}")
    print(f"Commit: {head}")
    print(
        f"{config.nodes} nodes, emulated one-slot devices of speeds {speeds} at"
        f" {config.service_ms:g} ms (real model, padded call); discovery {config.discovery};"
        f" {config.rate:g} req/s for {config.duration_s:g} s"
        f" (deadline {'none' if config.deadline_s is None else f'{config.deadline_s:g} s'});"
        f" faults {','.join(config.faults)} every {config.fault_every_s:g} s,"
        f" restart after {config.restart_after_s:g} s, SIGSTOP for {config.stop_for_s:g} s;"
        f" seed {config.seed}"
    )
    print(flush=True)
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        result = run_chaos(config, args.logs)
    else:
        with tempfile.TemporaryDirectory(prefix="edgemesh-chaos-") as workdir:
            result = run_chaos(config, Path(workdir))
    print_result(result)
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(result, info, head), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chaos under load on N edgemesh node processes.")
    parser.add_argument("--nodes", type=int, default=4, help="node processes (default 4)")
    parser.add_argument(
        "--speeds",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(),
        help="emulated speeds, repeated over the nodes (default 1,1,2,4)",
    )
    parser.add_argument("--service-ms", type=float, default=20.0, help="reference call, ms")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between faults")
    parser.add_argument(
        "--faults",
        type=lambda text: tuple(text.split(",")),
        default=FAULT_KINDS,
        help=f"fault kinds, comma-separated (default {','.join(FAULT_KINDS)})",
    )
    parser.add_argument("--restart-after", type=float, default=1.0, help="s before a restart")
    parser.add_argument("--stop-for", type=float, default=4.0, help="s a SIGSTOP lasts")
    parser.add_argument("--deadline", type=float, help="each request's deadline, s (default none)")
    parser.add_argument("--grace", type=float, default=15.0, help="s to wait for answers after")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--entry-every",
        type=int,
        default=2,
        help="every Nth fault hits the node the client uses (0: only by chance; default 2)",
    )
    parser.add_argument("--discovery", choices=("peer", "mdns"), default="peer")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the nodes' logs here")
    args = parser.parse_args(argv)
    if not 2 <= args.nodes <= 16:
        parser.error("--nodes must be between 2 and 16")
    if not 0 < args.rate <= 2000:
        parser.error("--rate must be above 0 and at most 2000")
    if not 0 < args.duration <= 600:
        parser.error("--duration must be above 0 and at most 600 s")
    if unknown := set(args.faults) - set(FAULT_KINDS):
        parser.error(f"--faults: unknown {sorted(unknown)}; choose among {FAULT_KINDS}")
    return run_stoppable(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
