"""What the command line says when a newcomer gets something wrong (issue 20).

Real ``edgemesh`` processes: two nodes on 127.0.0.1 with mDNS off (the
second bootstrapped from the first), and the client commands run as a user
runs them. Each message is compared whole, with its exit status: a message
that names an internal key, blames a failover that never happened, or
passes on numpy's advice to unpickle is a bug here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mesh.demo.processes import start_gateway_process, stop_process
from tests.helpers import MODELS_DIR
from tests.helpers.fleet import NodeFleet

pytestmark = [pytest.mark.system, pytest.mark.timeout(120)]


def edgemesh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        # Settings come only from the flags given.
        env={k: v for k, v in os.environ.items() if not k.startswith("EDGEMESH_")},
    )


def said(result: subprocess.CompletedProcess[str]) -> str:
    """The one line the CLI said on stderr (asserting there is exactly one, no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("edgemesh:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFleet]:
    fleet = NodeFleet(tmp_path_factory.mktemp("cli-messages"))
    try:
        fleet.start("first")
        fleet.start("second")
        yield fleet
    finally:
        fleet.stop_all()


def client_flags(fleet: NodeFleet, name: str = "first") -> list[str]:
    return ["--node", fleet.address(name), "--mesh-key-file", str(fleet.workdir / f"{name}.key")]


@pytest.fixture
def digit(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 64), np.float32))
    return path


def test_a_mistyped_model_with_a_bare_input_is_model_not_found(
    fleet: NodeFleet, digit: Path
) -> None:
    result = edgemesh(
        "infer", *client_flags(fleet), "--model", "digits-smal", "--input", str(digit)
    )
    assert result.returncode == 1, result.stderr
    assert said(result) == (
        "edgemesh: ModelNotFound: no node in the mesh serves model 'digits-smal'; "
        "available models: 'digits-small'"
    )


def test_a_bare_input_still_finds_its_name_for_the_right_model(
    fleet: NodeFleet, digit: Path
) -> None:
    result = edgemesh(
        "infer", *client_flags(fleet), "--model", "digits-small", "--input", str(digit), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)["outputs"]) == {"label", "probabilities"}


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--deadline", "-1"],
            "--deadline must be a positive number of seconds, got -1",
        ),
        (
            ["--deadline", "0"],
            "--deadline must be a positive number of seconds, got 0",
        ),
        (
            ["--timeout", "0"],
            "--timeout must be a positive number of seconds, got 0",
        ),
    ],
    ids=["deadline-negative", "deadline-zero", "timeout-zero"],
)
def test_a_deadline_or_timeout_that_is_not_positive_is_a_configuration_error(
    fleet: NodeFleet, digit: Path, flags: list[str], line: str
) -> None:
    result = edgemesh(
        "infer", *client_flags(fleet), "--model", "digits-small", "--input", str(digit), *flags
    )
    assert result.returncode == 2, result.stderr
    assert said(result) == f"edgemesh: configuration error: {line}"


def test_a_file_that_is_not_npy_is_refused_without_numpys_pickle_advice(
    fleet: NodeFleet, tmp_path: Path
) -> None:
    text = tmp_path / "x.csv"
    text.write_text("0,1,2,3\n")
    result = edgemesh(
        "infer", *client_flags(fleet), "--model", "digits-small", "--input", str(text)
    )
    assert result.returncode == 1, result.stderr
    assert said(result) == (
        f"edgemesh: InvalidInput: {text} is not a .npy or .npz file; write inputs with numpy: "
        "np.save('x.npy', array) or np.savez('x.npz', NAME=array)"
    )
    assert "allow_pickle" not in result.stderr


def test_an_npy_of_python_objects_is_refused_without_numpys_pickle_advice(
    fleet: NodeFleet, tmp_path: Path
) -> None:
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = edgemesh(
        "infer", *client_flags(fleet), "--model", "digits-small", "--input", f"X={objects}"
    )
    assert result.returncode == 1, result.stderr
    assert said(result) == (
        f"edgemesh: InvalidInput: {objects} holds Python objects, which edgemesh never "
        "unpickles; save a numeric array"
    )


def test_a_node_given_an_unknown_model_names_the_flag(tmp_path: Path) -> None:
    result = edgemesh(
        "node",
        "--name",
        "typo",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-mdns",
        "--models",
        str(MODELS_DIR),
        "--model",
        "digits-smal",
    )
    assert result.returncode == 2, result.stderr
    line = said(result)
    assert line.startswith(
        "edgemesh: configuration error: --model 'digits-smal': no model directory has it "
        "(see --models); available models: "
    ), line
    assert "'digits-small'" in line
    assert "runtime." not in line


def test_status_text_shows_the_queue_and_each_peer(fleet: NodeFleet, digit: Path) -> None:
    # One request through the mesh, so that the figures are not all blank.
    ran = edgemesh("infer", *client_flags(fleet), "--model", "digits-small", "--input", str(digit))
    assert ran.returncode == 0, ran.stderr
    deadline = time.monotonic() + 10
    while True:
        result = edgemesh("status", *client_flags(fleet))
        assert result.returncode == 0, result.stderr
        if re.search(r"^second\s+alive\s", result.stdout, re.M) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    text = result.stdout
    rows = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1)
        for line in text.splitlines()
        if line.startswith(("mesh ", "queue."))
    )
    assert re.fullmatch(r"[0-9a-f]+ \(mesh key required\)", rows["mesh"]), text
    assert rows["queue.queued"] == "0"
    assert rows["queue.running"] == "0"
    assert rows["queue.free_slots"] == "1 of 1"
    assert re.fullmatch(r"\d+\.\d ms", rows["queue.wait"]), text
    assert rows["queue.stealing"] == "on"
    header = next(line for line in text.splitlines() if line.startswith("peer "))
    assert re.split(r"\s{2,}", header.strip()) == [
        "peer",
        "state",
        "address",
        "models",
        "queued s",
        "free",
        "stolen out",
        "stolen in",
        "rtt ms",
        "heard",
    ]
    peer = next(line for line in text.splitlines() if line.startswith("second "))
    cells = re.split(r"\s{2,}", peer.strip())
    assert cells[:4] == ["second", "alive", fleet.address("second"), "digits-small"], text
    assert re.fullmatch(r"\d+\.\d{3}", cells[4]), text
    assert cells[5] == "1", text
    assert cells[6].isdigit() and cells[7].isdigit(), text


def test_node_help_lists_every_key_of_the_ready_file(fleet: NodeFleet) -> None:
    keys = json.loads((fleet.workdir / "first.ready.json").read_text())
    assert "http_port" in keys
    result = edgemesh("node", "--help")
    assert result.returncode == 0, result.stderr
    # argparse wraps the help; the keys are compared on one line.
    help_text = " ".join(result.stdout.split())
    listed = re.search(r"--ready-file FILE write \{([^}]*)\}", help_text)
    assert listed is not None, help_text
    assert {key.strip() for key in listed.group(1).split(",")} == set(keys)


def option_help(help_text: str, flag: str) -> str:
    """The help of ``flag`` in argparse's output, its lines joined."""
    lines = help_text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.lstrip().startswith(flag + " "))
    taken = [lines[first]]
    for line in lines[first + 1 :]:
        if line.lstrip().startswith("-") or not line.strip():
            break
        taken.append(line)
    return " ".join(" ".join(taken).split())


def test_infer_help_gives_the_timeout_default_and_how_it_differs_from_the_deadline() -> None:
    result = edgemesh("infer", "--help")
    assert result.returncode == 0, result.stderr
    timeout = option_help(result.stdout, "--timeout")
    assert "(default: 30;" in timeout, timeout
    assert "--deadline" in timeout, timeout
    deadline = option_help(result.stdout, "--deadline")
    assert "DeadlineExceeded" in deadline, deadline
    assert "default: none" in deadline, deadline


def test_the_gateway_says_it_listens_without_repeating_itself(tmp_path: Path) -> None:
    process, port = start_gateway_process(
        tmp_path, extra=["--model", "digits-small"], log_level="info"
    )
    try:
        log = (tmp_path / "gateway.log").read_text()
    finally:
        stop_process(process)
    assert f"gateway listening on http://127.0.0.1:{port}, serving" in log, log
    assert "gateway gateway" not in log, log
