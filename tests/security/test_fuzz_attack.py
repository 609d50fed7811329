"""The suite's short twin of benchmarks/attack.py: a real keyed node takes a
connection storm, fuzzed RPC frames and fuzzed HTTP bodies, and stays up,
answering only with typed errors, its memory back near where it started."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.attack import (
    LENIENT,
    alive,
    fuzz_http,
    fuzz_rpc,
    start_target,
    stop_target,
    storm,
)

_MIB = 2**20


async def test_a_node_survives_fuzzing_and_storms(tmp_path: Path) -> None:
    target = start_target(tmp_path, environ=LENIENT)
    try:
        before = target.rss
        answered = await storm(target.rpc_port, target.key, connections=400, concurrency=64)
        assert answered > 0
        rpc = await fuzz_rpc(target.rpc_port, target.key, frames=3000, seed=1)
        assert rpc.frames >= 3000
        # Every answer is a typed error the error tree knows; none is a bug.
        assert rpc.errors and "InternalError" not in rpc.errors, rpc.errors
        assert rpc.results > 0  # the valid calls among them were answered
        http = await fuzz_http(target.http_port, bodies=300, seed=1)
        assert http.untyped == 0
        assert 500 not in http.statuses, http.statuses
        assert set(http.statuses) <= {200, 400, 404, 413}, http.statuses
        assert await alive(target)
        # Memory: bounded growth, not a leak per connection or per frame.
        assert target.rss < before + 64 * _MIB, (before / _MIB, target.rss / _MIB)
    finally:
        stop_target(target)
