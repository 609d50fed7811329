"""``edgemesh demo`` run as a user runs it: its figures, and that it leaves nothing behind.

Every run gets ``--workdir`` under the test's tmp_path, so the processes it
starts are recognisable by that path in their command lines (their key,
ready and log files live there), and their ports by the ready files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import MODELS_DIR

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]

DEVICES = ("pi-zero", "laptop", "edge-box")


def demo_command(workdir: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "mesh", "demo", "--workdir", str(workdir), *flags]


def run_demo(workdir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        demo_command(workdir, *flags), capture_output=True, text=True, timeout=90, check=False
    )


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (the demo's children do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if str(path) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def ports_of(workdir: Path) -> list[int]:
    ports = []
    for ready in workdir.glob("*.ready.json"):
        info = json.loads(ready.read_text())
        ports += [info[key] for key in ("rpc_port", "http_port") if info.get(key)]
    return ports


def assert_nothing_left(workdir: Path) -> None:
    assert processes_using(workdir) == []
    for port in ports_of(workdir):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The per-node table's rows by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in (*DEVICES, "gateway"):
            rows[cells[0]] = cells
    return rows


def expected_accuracy(digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], n: int) -> str:
    """digits-small's accuracy on the first ``n`` digits, run here with onnxruntime directly."""
    pixels, truth = digits[0][:n].astype(np.float32), digits[1][:n]
    session = ort.InferenceSession(
        str(MODELS_DIR / "digits-small.onnx"), providers=["CPUExecutionProvider"]
    )
    (labels,) = session.run(["label"], {"X": pixels})
    return f"{float(np.mean(labels == truth)):.4f}"


def joint_expected(
    digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], threshold: float
) -> tuple[str, str, int]:
    """Cloud-only and joint accuracy, and the rows escalated, run here with onnxruntime."""
    pixels, truth = digits[0].astype(np.float32), digits[1]
    outputs = {}
    for model in ("digits-small", "digits-large"):
        session = ort.InferenceSession(
            str(MODELS_DIR / f"{model}.onnx"), providers=["CPUExecutionProvider"]
        )
        outputs[model] = session.run(["label", "probabilities"], {"X": pixels})
    (small, probabilities), (large, _) = outputs["digits-small"], outputs["digits-large"]
    unsure = probabilities.max(axis=1) < threshold
    joint = np.where(unsure, large, small)
    return (
        f"{float(np.mean(large == truth)):.4f}",
        f"{float(np.mean(joint == truth)):.4f}",
        int(unsure.sum()),
    )


def test_the_demo_shares_the_burst_and_leaves_nothing_behind(
    tmp_path: Path, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    total = len(digits[0])
    match = re.search(r"^accuracy (\d\.\d{4}) on (\d+) answered digits", result.stdout, re.M)
    assert match is not None, result.stdout
    assert match.group(1) == expected_accuracy(digits, total)
    assert int(match.group(2)) == total
    assert f"(manifest: {match.group(1)})" in result.stdout
    assert "errors    none" in result.stdout
    rows = table_rows(result.stdout)
    assert set(rows) == {*DEVICES, "gateway"}, result.stdout
    answered = {name: int(cells[2]) for name, cells in rows.items()}
    assert sum(answered.values()) == total
    # 450 requests of 20 ms / speed cannot all finish within 1 s on 350
    # requests a second, nor the slow entry node's share without help.
    assert answered["gateway"] > 0
    for thief in DEVICES[1:]:
        assert int(rows[thief][3]) > 0, rows[thief]
    # The joint-inference act: the edge answers, the unsure digits go to the cloud model.
    cloud, joint, escalated = joint_expected(digits, 0.8)
    assert f"  edge only  accuracy {match.group(1)}\n" in result.stdout
    assert f"  cloud only accuracy {cloud}\n" in result.stdout
    assert f"  joint      accuracy {joint}, ran on pi-zero, escalated rows on gateway" in (
        result.stdout
    )
    assert f"  escalated  {escalated} of {total} digits" in result.stdout
    assert_nothing_left(tmp_path)


def test_without_a_gateway_the_overflow_is_refused(
    tmp_path: Path, digits: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
) -> None:
    # 300 digits with 500 ms each: more than the three devices finish in time.
    result = run_demo(tmp_path, "--no-gateway", "--samples", "300", "--deadline-ms", "500")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    assert set(rows) == set(DEVICES)
    answered = sum(int(cells[2]) for cells in rows.values())
    refused = re.search(r"^\s*errors\s+Overloaded (\d+)$", result.stdout, re.M)
    assert refused is not None, result.stdout
    assert answered + int(refused.group(1)) == 300
    assert "this node has no cloud gateway" in result.stdout
    # The legend speaks of the run that happened: no gateway got anything.
    assert "the gateway got" not in result.stdout
    assert "the deadline was refused (no gateway)" in result.stdout
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("stage", "signum"),
    [
        ("starting nodes", signal.SIGINT),
        ("sending", signal.SIGINT),
        ("sending", signal.SIGTERM),
    ],
    ids=["ctrl-c-while-starting", "ctrl-c-mid-burst", "sigterm-mid-burst"],
)
def test_interrupted_it_stops_every_process(
    tmp_path: Path, stage: str, signum: signal.Signals
) -> None:
    demo = subprocess.Popen(
        demo_command(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 60
        seen = []
        # Bounded: the demo prints each stage's line as it reaches it.
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            seen.append(line)
            if not line or stage in line:
                break
        assert stage in seen[-1], "".join(seen)
        demo.send_signal(signum)
        _, stderr = demo.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            demo.kill()
        demo.wait()
    assert demo.returncode == 130, stderr
    assert "interrupted" in stderr
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("stage", ["all started", "sending"], ids=["forming", "mid-burst"])
def test_ctrl_c_at_a_terminal_stops_everything_in_one_line(tmp_path: Path, stage: str) -> None:
    """Ctrl-C at a terminal signals the whole foreground process group: the demo
    and every process it started at once, so the children may be gone before
    the demo hears of it. It must still say one line and exit 130."""
    demo = subprocess.Popen(
        demo_command(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Its own process group, as a shell gives a foreground job.
        process_group=0,
    )
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 60
        seen = []
        # Bounded: the demo prints each stage's line as it reaches it.
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            seen.append(line)
            if not line or stage in line:
                break
        assert stage in seen[-1], "".join(seen)
        os.killpg(demo.pid, signal.SIGINT)
        _, stderr = demo.communicate(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
    assert demo.returncode == 130, stderr
    assert stderr == "edgemesh demo: interrupted; every process stopped\n"
    assert_nothing_left(tmp_path)
