"""The README and the examples' markdown as tests, so the docs cannot drift
from the code (issue 20).

Every fenced block carries a marker (tests/helpers/markdown_blocks.py says
which): ``run`` blocks run in a fresh temp dir with the venv's bin first on
PATH, ``run-background`` blocks start their nodes and gateways there (on
loopback only: the runner refuses any other address) and keep them up for
the file's later blocks, ``check`` blocks go through the real CLI parser,
compiler and config loader without sending a packet. The runner itself is
tested on small synthetic markdown below.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mesh.config import DEFAULT_GATEWAY_PORT, DEFAULT_RPC_PORT
from mesh.demo.processes import free_port, stop_process
from tests.helpers import REPO
from tests.helpers.markdown_blocks import (
    PYTHON,
    SHELL,
    Block,
    check_block,
    edgemesh_commands,
    loopback_problems,
    marker_problems,
    parse_blocks,
    parse_edgemesh,
    shell_commands,
)

pytestmark = pytest.mark.system

DOCS = ("README.md", "examples/lan_quickstart.md")
BIN = Path(sys.executable).parent
BLOCK_TIMEOUT_S = 45.0
READY_TIMEOUT_S = 30.0


def blocks_of(doc: str) -> list[Block]:
    return parse_blocks((REPO / doc).read_text(), doc)


class BlockFailed(AssertionError):
    """A run block exited non-zero, or a background process did not come up."""


# --- the runner -----------------------------------------------------------------


def environment() -> dict[str, str]:
    """The user's shell as the docs assume it: the venv's commands first, and
    no EDGEMESH_* settings from whoever runs the tests."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMESH_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_block(block: Block, workdir: Path) -> None:
    """Run one ``run`` block in ``workdir``; BlockFailed with its output if it fails."""
    if block.lang in SHELL:
        script = workdir / "block.sh"
        script.write_text("set -euo pipefail\n" + block.text)
        command = ["bash", str(script)]
    else:
        script = workdir / "block.py"
        script.write_text(block.text)
        command = [str(BIN / "python"), str(script)]
    try:
        result = subprocess.run(
            command,
            cwd=workdir,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BlockFailed(f"{block.where}: still running after {BLOCK_TIMEOUT_S:.0f} s") from exc
    if result.returncode != 0:
        raise BlockFailed(
            f"{block.where}: exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )


def ports_of(argv: Sequence[str]) -> list[int]:
    """The ports an ``edgemesh node``/``gateway`` command listens on (0: unknown)."""
    args, _ = parse_edgemesh(argv)
    default = DEFAULT_RPC_PORT if argv[0] == "node" else DEFAULT_GATEWAY_PORT
    port = getattr(args, "port", None)
    ports = [default if port is None else port, getattr(args, "http_port", None)]
    return [int(port) for port in ports if port]  # None: not asked for; 0: any free one


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_background(block: Block, workdir: Path, started: list[Server]) -> None:
    """Start each ``edgemesh node``/``gateway`` line of a run-background block
    in the background (as in a terminal of its own), wait until every port it
    names accepts connections, then run the block's other lines as a run
    block would; each process started is appended to ``started``."""
    rest: list[str] = []
    for line in block.text.replace("\\\n", " ").splitlines():
        commands = shell_commands(line)
        if not (commands and commands[0][:1] == ["edgemesh"] and commands[0][1:2] in SERVERS):
            rest.append(line)
            continue
        if len(commands) > 1:
            raise BlockFailed(f"{block.where}: put `{line.strip()}` on a line of its own")
        start_server(block, commands[0], workdir, started)
    if any(shell_commands(line) for line in rest):
        run_block(replace(block, text="\n".join(rest) + "\n"), workdir)


SERVERS = (["node"], ["gateway"])


def start_server(block: Block, words: list[str], workdir: Path, started: list[Server]) -> None:
    ports = ports_of(words[1:])
    for earlier in [server for server in started if set(server.ports) & set(ports)]:
        # The same port as a node the file started before: as a user would,
        # stop that one first (the README's later sections start afresh).
        stop_process(earlier.process)
        started.remove(earlier)
    for port in ports:
        if listening(port):
            pytest.skip(f"{block.where}: port {port} is already in use on this machine")
    log_path = workdir / f"background-{'-'.join(map(str, ports))}.log"
    executable = shutil.which("edgemesh", path=environment()["PATH"]) or "edgemesh"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [executable, *words[1:]],
            cwd=workdir,
            env=environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    started.append(Server(process, ports))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all(listening(port) for port in ports):
        if process.poll() is not None or time.monotonic() > deadline:
            said = log_path.read_text(errors="replace")
            raise BlockFailed(f"{block.where}: `{' '.join(words)}` did not come up:\n{said}")
        time.sleep(0.05)


@dataclass
class Server:
    """A node or gateway a run-background block started, and its ports."""

    process: subprocess.Popen[bytes]
    ports: list[int]


@contextmanager
def background() -> Iterator[list[Server]]:
    """The servers run-background blocks start; stopped (SIGTERM, then
    SIGKILL) when the file's blocks are done, however they ended."""
    servers: list[Server] = []
    try:
        yield servers
    finally:
        for server in reversed(servers):
            stop_process(server.process)


def run_doc(blocks: Sequence[Block], workdir: Path) -> int:
    """Run a file's run and run-background blocks in order in ``workdir``;
    the number of blocks it ran. Refuses (before running anything) a block
    that would leave loopback or has an invalid ``edgemesh`` command."""
    runnable = [block for block in blocks if block.kind in ("run", "run-background")]
    problems = [problem for block in runnable for problem in check_runnable(block)]
    assert not problems, "\n".join(problems)
    with background() as started:
        for block in runnable:
            if block.kind == "run-background":
                start_background(block, workdir, started)
            else:
                run_block(block, workdir)
    return len(runnable)


def check_runnable(block: Block) -> list[str]:
    problems = loopback_problems(block)
    if block.lang in SHELL:
        problems += check_block(block)
        if block.kind == "run":
            problems += [
                f"{block.where}: `edgemesh {argv[0]}` runs until stopped: "
                "mark its block run-background"
                for argv in edgemesh_commands(block.text)
                if argv[:1] in (["node"], ["gateway"])
            ]
    return problems


# --- the docs -------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS)
def test_every_block_says_what_the_test_does_with_it(doc: str) -> None:
    problems = marker_problems(blocks_of(doc))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS)
def test_check_blocks_match_the_cli_the_compiler_and_the_config_loader(doc: str) -> None:
    checked = [block for block in blocks_of(doc) if block.kind == "check"]
    assert checked, f"{doc} has no check blocks: are the markers there?"
    problems = [problem for block in checked for problem in check_block(block)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS)
def test_run_blocks_run_as_written(doc: str, tmp_path: Path) -> None:
    if not (BIN / "edgemesh").exists():
        pytest.skip(f"no edgemesh command in {BIN}: install the package (pip install -e .)")
    blocks = blocks_of(doc)
    if not any(block.kind in ("run", "run-background") for block in blocks):
        pytest.skip(f"{doc} has no block that can run on one machine")
    run_doc(blocks, tmp_path)
    # What the docs' commands wrote stayed in the temp dir, not the checkout.
    assert not (REPO / "x.npy").exists()


# --- the runner itself, on synthetic markdown -------------------------------------------


def doc(*parts: str) -> list[Block]:
    return parse_blocks("\n".join(parts), "synthetic.md")


def fenced(lang: str, body: str) -> str:
    return f"```{lang}\n{body}\n```\n"


def test_a_block_without_a_marker_or_a_reason_fails() -> None:
    blocks = doc(
        "text", fenced("sh", "echo hi"),
        "<!-- readme-test: skip -->", fenced("sh", "echo hi"),
        "<!-- readme-test: skip (a real LAN) -->", fenced("sh", "echo hi"),
        "<!-- readme-test: runn -->", fenced("sh", "echo hi"),
        "<!-- readme-test: run -->", fenced("toml", "a = 1"),
    )  # fmt: skip
    problems = marker_problems(blocks)
    assert [problem.split(":")[1] for problem in problems] == ["2", "7", "17", "22"]
    assert "without a marker" in problems[0]
    assert "needs a reason" in problems[1]
    assert "unknown marker 'runn'" in problems[2]
    assert "only sh and python blocks can run" in problems[3]


def test_shell_commands_split_as_the_shell_would() -> None:
    script = (
        "# a comment line\n"
        "edgemesh node --name 'a b' \\\n  --port 7701   # trailing comment\n"
        "python -c 'print(\"#\")\n  # not a comment' > out.txt && edgemesh status|head\n"
    )
    assert shell_commands(script) == [
        ["edgemesh", "node", "--name", "a b", "--port", "7701"],
        ["python", "-c", 'print("#")\n  # not a comment'],
        ["edgemesh", "status"],
        ["head"],
    ]


def test_a_wrong_flag_in_a_check_block_fails() -> None:
    (block,) = doc(
        "<!-- readme-test: check -->",
        fenced("sh", "edgemesh node --name a --no-such-flag 3   # on each device"),
    )
    (problem,) = check_block(block)
    assert problem.startswith("synthetic.md:2: `edgemesh node --name a --no-such-flag 3`: ")
    assert "unrecognized arguments: --no-such-flag" in problem
    good = doc("<!-- readme-test: check -->", fenced("sh", "edgemesh node --port 7701"))
    assert check_block(good[0]) == []


def test_python_and_toml_check_blocks_fail_on_drift() -> None:
    python_bad, python_missing, toml_bad = doc(
        "<!-- readme-test: check -->", fenced("python", "def f(:\n    pass"),
        "<!-- readme-test: check -->",
        fenced("python", "from mesh import NoSuchClient\nasync with NoSuchClient() as c:\n    ..."),
        "<!-- readme-test: check -->", fenced("toml", 'name = "a"\nno_such_key = 1'),
    )  # fmt: skip
    assert "does not compile" in check_block(python_bad)[0]
    assert check_block(python_missing) == [
        "synthetic.md:8: `from mesh import NoSuchClient`: no such name"
    ]
    assert "unknown keys ['no_such_key']" in check_block(toml_bad)[0]
    (toml_good,) = doc(
        "<!-- readme-test: check -->",
        fenced("toml", 'mesh_key_file = "/on/the/device/mesh.key"\nport = 7701'),
    )
    assert check_block(toml_good) == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("edgemesh status --node 192.168.1.21:7700", "192.168.1.21 is not loopback"),
        ("curl -s http://cloud.example:8000/v2", "cloud.example is not loopback"),
        ("edgemesh node --no-mdns", "`edgemesh node` needs --host 127.0.0.1 here"),
        ("edgemesh node --host 127.0.0.1 --interface 10.1.2.3", "10.1.2.3 is not loopback"),
        ("edgemesh gateway --port 8000", "`edgemesh gateway` needs --host 127.0.0.1 here"),
    ],
)
def test_a_run_block_that_would_leave_loopback_is_refused(command: str, expected: str) -> None:
    (block,) = doc("<!-- readme-test: run-background -->", fenced("sh", command))
    problems = check_runnable(block)
    assert any(expected in problem for problem in problems), problems


def test_a_node_in_a_run_block_keeps_mdns_on_loopback() -> None:
    bare, interface, off = doc(
        "<!-- readme-test: run-background -->", fenced("sh", "edgemesh node --host 127.0.0.1"),
        "<!-- readme-test: run-background -->",
        fenced("sh", "edgemesh node --host 127.0.0.1 --interface 127.0.0.1"),
        "<!-- readme-test: run-background -->",
        fenced("sh", "edgemesh node --host 127.0.0.1 --no-mdns"),
    )  # fmt: skip
    assert check_runnable(interface) == []
    assert check_runnable(off) == []
    # A bare --host 127.0.0.1 passes only where the loader itself keeps mDNS
    # on loopback for it (issue 20); never as an mDNS on every interface.
    for problem in check_runnable(bare):
        assert "would use mDNS beyond loopback" in problem


def test_run_blocks_run_in_order_and_a_failing_one_fails(tmp_path: Path) -> None:
    ok = doc(
        "<!-- readme-test: run -->", fenced("sh", "echo 3 > n.txt"),
        "<!-- readme-test: run -->",
        fenced("python", "from pathlib import Path\nassert Path('n.txt').read_text() == '3\\n'"),
        "<!-- readme-test: skip (never runs) -->", fenced("sh", "exit 1"),
    )  # fmt: skip
    assert run_doc(ok, tmp_path) == 2
    failing = doc(
        "<!-- readme-test: run -->", fenced("sh", "false | cat\necho never"),
    )  # fmt: skip
    with pytest.raises(BlockFailed, match=r"synthetic.md:2: exited 1"):
        run_doc(failing, tmp_path)
    bad_flag = doc(
        "<!-- readme-test: run -->", fenced("sh", "edgemesh status --server 127.0.0.1:1")
    )
    with pytest.raises(AssertionError, match="unrecognized arguments: --server"):
        run_doc(bad_flag, tmp_path)


def test_a_long_running_command_must_be_run_background(tmp_path: Path) -> None:
    blocks = doc(
        "<!-- readme-test: run -->",
        fenced("sh", "edgemesh node --host 127.0.0.1 --no-mdns --port 0"),
    )
    with pytest.raises(AssertionError, match="mark its block run-background"):
        run_doc(blocks, tmp_path)


def test_a_python_run_block_runs_in_the_temp_dir(tmp_path: Path) -> None:
    # A python run block runs with the venv's interpreter, in the temp dir.
    (block,) = doc(
        "<!-- readme-test: run -->",
        fenced("python", "import sys, os\nprint(sys.prefix)\nopen('here', 'w').close()"),
    )
    assert block.lang in PYTHON
    run_doc([block], tmp_path)
    assert (tmp_path / "here").exists()


def test_run_background_keeps_its_node_up_for_later_blocks_then_stops_it(
    tmp_path: Path,
) -> None:
    port = free_port()
    blocks = doc(
        "<!-- readme-test: run-background -->",
        fenced("sh", f"edgemesh node --name readme-bg --host 127.0.0.1 --no-mdns --port {port} "
               f"--model digits-small   # terminal 1\nedgemesh models --node 127.0.0.1:{port}"),
        "<!-- readme-test: run -->",
        fenced("sh", f"edgemesh status --node 127.0.0.1:{port} | grep readme-bg"),
    )  # fmt: skip
    assert run_doc(blocks, tmp_path) == 2
    assert not listening(port)
    said = (tmp_path / f"background-{port}.log").read_text()
    assert "listening on 127.0.0.1" in said, said
