"""A partition of the entry node heals without failing requests (issue 18).

Three hosts on a bridge (network namespaces), one ``edgemesh node`` in each,
started as a user would, each acting as a device of one slot and 40 ms a
request, so the entry node h1 alone cannot keep up with the load and its
peers steal from it. An independent client process in h1's namespace sends
a bounded steady load to h1 with 1 s deadlines. h1's cable is pulled for a
few seconds and plugged back.

What is checked: requests issued while the cable is out may fail (h1 alone
is too slow for the load) or be served by h1; requests issued after the
heal and a short settle must all be answered, as in a healthy mesh. Before
issue 18, the heal itself failed dozens: h1's redial sat in back-off, its
peers declared it dead again, and jobs it granted to a peer whose grant
reply was lost expired there "held by h3".

Skips where namespaces cannot be made (not root, no ``ip``). Traffic stays
inside the namespaces and the bridge, which has no address.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import KEY
from tests.helpers.netns import NetnsLab, multicast_lab, unavailable_reason

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

PORT = 7700
MODEL = "digits-small"
SERVICE_MS = 40  # per request, one slot: 25 requests/s per node
RATE = 35  # requests/s: more than one node serves, well under three
DEADLINE_S = 1.0
# The timeline, from the load's start.
BEFORE_S = 3.0  # healthy mesh under load
PARTITION_S = 12.0  # h1's cable out, as long as in the issue
SETTLE_S = 3.0  # after the heal: redial, gossip, steal again
AFTER_S = 5.0  # what must all be answered
READY_S = 30.0
FORM_S = 20.0

# The independent client: sends RATE requests a second for DURATION seconds
# (bounded by count), each with a 1 s deadline, and writes one JSON line per
# request: when it was sent (CLOCK_MONOTONIC, shared across namespaces) and
# its outcome ("ok" or the error's code).
_LOAD = """
import asyncio, json, sys, time
from pathlib import Path
import numpy as np
from mesh import MeshClient
from mesh.errors import MeshError

address, key_file, rate, duration, deadline, out = sys.argv[1:7]
rate, duration, deadline = float(rate), float(duration), float(deadline)

async def one(client, pixels, results):
    sent = time.monotonic()
    try:
        await client.infer("digits-small", {"X": pixels}, deadline=deadline, timeout=deadline + 5)
        outcome = "ok"
    except MeshError as exc:
        outcome = exc.code
    except TimeoutError:
        outcome = "client-timeout"
    results.append({"sent": sent, "done": time.monotonic(), "outcome": outcome})

async def main():
    key = Path(key_file).read_bytes()
    pixels = np.zeros((1, 64), dtype=np.float32)
    results = []
    async with MeshClient(address, mesh_key=key, timeout=10.0, heartbeat=None) as client:
        await client.ping()
        print(json.dumps({"started": time.monotonic()}), flush=True)
        start = time.monotonic()
        count = int(rate * duration)
        async with asyncio.TaskGroup() as tasks:
            for i in range(count):
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
                tasks.create_task(one(client, pixels, results))
    Path(out).write_text("\\n".join(json.dumps(r) for r in results))

asyncio.run(main())
"""


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    """Three namespaces on a bridge; always removed, whatever happens."""
    with multicast_lab(hosts=3) as made:
        yield made


def _start_node(lab: NetnsLab, host: str, key_file: Path, tmp_path: Path) -> None:
    emulation = ["--slots", "1", "--emulate-speed", "1", "--emulate-service-ms", str(SERVICE_MS)]
    lab.start_node(
        host, port=PORT, key_file=key_file, workdir=tmp_path, model=MODEL, extra=emulation
    )


def _peers(lab: NetnsLab, host: str, key_file: Path) -> dict[str, str]:
    result = lab.run_in(
        host,
        lab.status_command(host, port=PORT, key_file=key_file),
        timeout=15,
    )
    return {peer["name"]: peer["state"] for peer in json.loads(result.stdout)["peers"]}


def _logs(tmp_path: Path, hosts: list[str]) -> str:
    parts = []
    for host in hosts:
        log = tmp_path / f"{host}.log"
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        parts.append(f"--- {host} ---\n{text[-3000:]}")
    return "\n".join(parts)


def test_entry_partition_heals_without_failures(lab: NetnsLab, tmp_path: Path) -> None:
    key_file = tmp_path / "mesh.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o600)
    hosts = lab.hosts
    try:
        for host in hosts:
            _start_node(lab, host, key_file, tmp_path)
        deadline = time.monotonic() + READY_S
        for host in hosts:
            while not (tmp_path / f"{host}.ready.json").exists():
                assert time.monotonic() < deadline, f"{host} did not start"
                time.sleep(0.05)
        deadline = time.monotonic() + FORM_S
        while not all(
            set(views.values()) == {"alive"} and len(views) == 2
            for views in (_peers(lab, host, key_file) for host in hosts)
        ):
            assert time.monotonic() < deadline, "the mesh did not form by mDNS"
            time.sleep(0.2)

        out = tmp_path / "load.jsonl"
        duration = BEFORE_S + PARTITION_S + SETTLE_S + AFTER_S
        load = lab.start_in(
            "h1",
            [
                sys.executable,
                "-c",
                _LOAD,
                f"{lab.address('h1')}:{PORT}",
                str(key_file),
                str(RATE),
                str(duration),
                str(DEADLINE_S),
                str(out),
            ],
        )
        assert load.stdout is not None
        line = load.stdout.readline().decode()
        started = json.loads(line)["started"]
        time.sleep(max(0.0, started + BEFORE_S - time.monotonic()))
        unplugged = time.monotonic()
        lab.unplug("h1")
        time.sleep(PARTITION_S)
        lab.plug("h1")
        healed = time.monotonic()
        load.wait(timeout=duration + 30)
        assert load.returncode == 0, load.stdout.read().decode()

        results = [json.loads(line) for line in out.read_text().splitlines()]

        def window(low: float, high: float) -> Counter[str]:
            return Counter(r["outcome"] for r in results if low <= r["sent"] < high)

        # A request sent just before the cable went may be caught by it.
        before = window(started, unplugged - DEADLINE_S)
        during = window(unplugged - DEADLINE_S, healed)
        settling = window(healed, healed + SETTLE_S)
        after = window(healed + SETTLE_S, float("inf"))
        print(
            f"\nbefore {dict(before)}; cable out {dict(during)}; "
            f"settling {dict(settling)}; after {dict(after)}"
        )
        for host in hosts:
            status = json.loads(
                lab.run_in(
                    host,
                    [
                        sys.executable,
                        "-m",
                        "mesh",
                        "status",
                        "--node",
                        f"{lab.address(host)}:{PORT}",
                        "--mesh-key-file",
                        str(key_file),
                        "--json",
                    ],
                    timeout=15,
                ).stdout
            )
            print(host, {k: v for k, v in sorted(status["counters"].items()) if v})
        # Back from the partition, h1 is not declared dead a second time (its
        # gossip sent into the partition, retransmitted after the heal, once
        # revived it for a moment and killed it again 1.4 s later).
        for peer in ("h2", "h3"):
            log = (tmp_path / f"{peer}.log").read_text(errors="replace")
            assert log.count("peer h1 is dead") == 1, f"{peer} saw h1 die more than once"
        assert sum(after.values()) >= int(RATE * AFTER_S) - 1, after
        # A healthy mesh serves this load: so must the healed one.
        assert set(after) == {"ok"}, f"after the heal and {SETTLE_S} s: {dict(after)}"
        assert set(before) == {"ok"}, f"before the partition (healthy mesh): {dict(before)}"
    except BaseException:
        print(_logs(tmp_path, hosts))
        raise
    finally:
        lab.cleanup()
