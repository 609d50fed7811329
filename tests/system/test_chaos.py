"""Chaos under load, short: the suite's twin of ``benchmarks/chaos.py`` (issue 18).

Three real ``edgemesh node`` processes on 127.0.0.1 (``--no-mdns``, each
given the others as ``--peer``), emulated one-slot devices of speeds 1, 2
and 4 at 20 ms a call, take 100 requests a second for 20 s from one
independent ``MeshClient`` given all three addresses, while every 4 s one
node is SIGKILLed (and restarted), SIGTERMed (and restarted once it
exited) or SIGSTOPped for 4 s (past the client's 3 s heartbeat). The kinds
are dealt in turn, so all three come up; every second fault hits the node
the client is using, the owner of the requests in flight, so that node is
killed or terminated at least once (two different kinds hit it). The driver is
:mod:`tests.helpers.chaos`, which the benchmark runs too.

What must hold: every request answered exactly once with onnxruntime's
answer (0 lost, 0 doubled, 0 wrong), and no request fails at all. That is
what the design promises here: there is no deadline to miss (so no
``DeadlineExceeded``), one node at most is faulty at a time and the load is
under half of what the two others can serve (so no ``Overloaded``, and a
failed-over call always finds a node: no ``PeerUnavailable``), a lost
connection is failed over under the same request id, a dead holder's work
is requeued by its owner, and a SIGTERMed node drains what it holds. With
a deadline set, ``DeadlineExceeded`` would be the one error the design
permits; the benchmark's ``--deadline`` shows it, the test does not set one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.chaos import FAULT_KINDS, ChaosConfig, run_chaos

pytestmark = [pytest.mark.system, pytest.mark.timeout(150)]

CONFIG = ChaosConfig(
    nodes=3,
    speeds=(1.0, 2.0, 4.0),
    rate=100.0,
    duration_s=20.0,
    fault_every_s=4.0,
    entry_every=2,
    seed=18,
)


def test_faults_under_load_lose_double_and_garble_nothing(tmp_path: Path) -> None:
    result = run_chaos(CONFIG, tmp_path)

    problems = {
        "lost": result.lost,
        "doubled": result.doubled,
        "wrong": result.count("wrong"),
        "errors": dict(result.errors),
    }
    faults = [(f.kind, f.node, f.entry, f.exit_code, f.note) for f in result.faults]
    assert problems == {"lost": 0, "doubled": 0, "wrong": 0, "errors": {}}, (
        problems,
        result.error_examples(),
        faults,
    )
    assert result.sent > 0.8 * CONFIG.rate * CONFIG.duration_s  # the load ran
    assert result.count("ok") == result.sent
    # Each kind of fault happened, each killed or terminated node came back,
    # and the client's own node was killed or terminated under it.
    assert {f.kind for f in result.faults} == set(FAULT_KINDS), faults
    assert all(f.over is not None for f in result.faults), faults
    assert any(f.entry and f.kind in ("kill", "term") for f in result.faults), faults
    # Answers came from the mesh, and the client moved off the node it lost.
    assert {c.ran_on for c in result.calls} <= set(CONFIG.names)
    assert len({c.node for c in result.calls}) >= 2
