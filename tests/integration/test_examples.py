"""Every example in examples/ runs, as a user would run it.

- ``classify_digits.py`` against two real nodes on 127.0.0.1 (no mDNS);
- ``bring_your_own_model.py``, which starts its own node on 127.0.0.1;
- ``lan_quickstart.md``: every flag it shows exists in the ``--help`` of
  the command it is given to (it cannot be run: it needs real devices);
- ``netns_demo.sh --quick`` in network namespaces; skipped, with the
  reason, where they cannot be made (not root, no ``ip``, no multicast
  between namespaces).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from mesh.demo.processes import start_node_process, stop_process
from tests.helpers import MODELS_DIR, REPO
from tests.helpers.netns import multicast_lab, unavailable_reason

EXAMPLES = REPO / "examples"
RUN_TIMEOUT_S = 120.0


def run_example(*args: str | Path, timeout: float = RUN_TIMEOUT_S) -> str:
    """Run ``args`` from the repository root; returns stdout, fails with both streams."""
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr}"
    )
    return result.stdout


# --- classify_digits.py ------------------------------------------------------------


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """Two nodes with a fresh key, the second bootstrapped to the first; their addresses."""
    key = secrets.token_hex(32).encode()
    key_file = tmp_path / "mesh.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        first, port_a = start_node_process(
            tmp_path, name="node-a", key=key, extra=["--no-mdns", "--model", "digits-small"]
        )
        processes.append(first)
        second, port_b = start_node_process(
            tmp_path,
            name="node-b",
            key=key,
            extra=["--no-mdns", "--model", "digits-small", "--peer", f"127.0.0.1:{port_a}"],
        )
        processes.append(second)
        yield [f"127.0.0.1:{port_a}", f"127.0.0.1:{port_b}"], key_file
    finally:
        for process in processes:
            stop_process(process)


@pytest.mark.system
def test_classify_digits_reports_the_models_accuracy_and_where_it_ran(
    two_nodes: tuple[list[str], Path],
) -> None:
    addresses, key_file = two_nodes
    nodes = [arg for address in addresses for arg in ("--node", address)]
    out = run_example(
        sys.executable, EXAMPLES / "classify_digits.py", *nodes, "--mesh-key-file", key_file
    )

    accuracy = re.search(r"^accuracy (\d\.\d{4}) on 450 digits$", out, re.MULTILINE)
    assert accuracy is not None, out
    manifest = tomllib.loads((MODELS_DIR / "manifest.toml").read_text())
    expected = manifest["models"]["digits-small"]["accuracy"]
    assert float(accuracy.group(1)) == pytest.approx(expected, abs=1e-4)

    ran_on = re.search(r"^ran on\s+(.+)$", out, re.MULTILINE)
    assert ran_on is not None, out
    counts = dict(part.split(": ") for part in ran_on.group(1).split(", "))
    assert set(counts) <= {"node-a", "node-b"}, out
    assert sum(int(count) for count in counts.values()) == 450, out


# --- bring_your_own_model.py -------------------------------------------------------


@pytest.mark.system
def test_bring_your_own_model_serves_a_fresh_onnx_file(tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="the example builds its model with the onnx package")
    models = tmp_path / "my-models"
    out = run_example(sys.executable, EXAMPLES / "bring_your_own_model.py", models)

    assert (models / "affine.onnx").is_file()
    assert "OK: 'affine' ran on node 'byom' and matches numpy" in out, out
    # Its steps are printed in order, the node stopped last.
    steps = [line[:2] for line in out.splitlines() if re.match(r"^\d\. ", line)]
    assert steps == ["1.", "2.", "3.", "4."], out


# --- lan_quickstart.md ---------------------------------------------------------------

QUICKSTART = EXAMPLES / "lan_quickstart.md"
SUBCOMMANDS = ("node", "gateway", "status", "models", "infer", "demo")
# Flags in the quickstart that belong to other programs.
OTHER_PROGRAMS_FLAGS = {
    "--network",  # docker run
    "--permanent",  # firewall-cmd
    "--add-port",
    "--add-service",
    "--reload",
    "--now",  # systemctl enable
}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


@cache
def help_flags(*command: str) -> frozenset[str]:
    """The flags that ``command --help`` lists."""
    result = subprocess.run(
        [*command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return frozenset(FLAG.findall(result.stdout))


def edgemesh_help(subcommand: str | None) -> frozenset[str]:
    return help_flags(sys.executable, "-m", "mesh", *([subcommand] if subcommand else []))


def code_lines(markdown: str) -> list[str]:
    """The lines inside fenced code blocks, with backslash continuations joined."""
    lines: list[str] = []
    inside = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + line.strip()
            else:
                lines.append(line)
    return lines


def quickstart_commands() -> list[tuple[tuple[str, ...], str]]:
    """Each command the quickstart tells a user to run: (the program, its arguments)."""
    commands = []
    for line in code_lines(QUICKSTART.read_text()):
        code = line.split(" #")[0]  # a trailing comment is not part of the command
        for part in re.split(r"&&|;", code):
            if match := re.search(rf"\bedgemesh (?:({'|'.join(SUBCOMMANDS)})\b)?(.*)", part):
                commands.append((("edgemesh", *filter(None, [match.group(1)])), match.group(2)))
            elif match := re.search(r"(examples/\S+\.(?:py|sh))(.*)", part):
                commands.append(((match.group(1),), match.group(2)))
    return commands


def flags_of(program: tuple[str, ...]) -> frozenset[str]:
    if program[0] == "edgemesh":
        return edgemesh_help(program[1] if len(program) > 1 else None)
    if program[0].endswith(".py"):
        return help_flags(sys.executable, program[0])
    return help_flags("bash", program[0])


def test_lan_quickstart_commands_use_only_flags_that_exist() -> None:
    commands = quickstart_commands()
    # It shows every command a LAN user needs, so an empty parse is a broken test.
    shown = {program for program, _ in commands}
    assert {("edgemesh", "node"), ("edgemesh", "status"), ("edgemesh", "gateway")} <= shown
    assert ("examples/classify_digits.py",) in shown
    unknown = [
        f"{' '.join(program)}: {flag}"
        for program, arguments in commands
        for flag in FLAG.findall(arguments)
        if flag not in flags_of(program)
    ]
    assert not unknown, f"flags lan_quickstart.md uses that --help does not list: {unknown}"


def test_lan_quickstart_mentions_no_flag_that_nothing_has() -> None:
    """Flags named in its prose too (``--suspect-after``) exist in some command."""
    known = frozenset().union(
        *(edgemesh_help(sub) for sub in (None, *SUBCOMMANDS)),
        help_flags(sys.executable, "examples/classify_digits.py"),
        help_flags("bash", "examples/netns_demo.sh"),
        OTHER_PROGRAMS_FLAGS,
    )
    mentioned = set(FLAG.findall(QUICKSTART.read_text()))
    assert not mentioned - known, sorted(mentioned - known)


def test_lan_quickstart_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#:]+)\)", QUICKSTART.read_text()):
        assert (EXAMPLES / target).exists(), target


# --- netns_demo.sh ---------------------------------------------------------------------

DEMO_PREFIX = "em-demo-t"  # the tests' own names: never a user's demo (em-demo)
DEMO_TIMEOUT_S = 240.0


def _sweep_demo(prefix: str) -> None:
    """What a killed run of the demo with ``prefix`` left behind; nothing if none."""
    for host in ("h1", "h2", "h3"):
        ns = f"{prefix}-{host}"
        pids = subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10, check=False)
    subprocess.run(
        ["ip", "link", "del", f"{prefix}-br"], capture_output=True, timeout=10, check=False
    )


@pytest.fixture
def namespaces_with_multicast() -> None:
    """Skip unless namespaces can be made here and multicast crosses a bridge between them."""
    with multicast_lab(hosts=2):
        pass


def test_netns_demo_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", EXAMPLES / "netns_demo.sh"], check=True, timeout=30)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", EXAMPLES / "netns_demo.sh"], check=True, timeout=60)


@pytest.mark.system
@pytest.mark.timeout(DEMO_TIMEOUT_S + 60)
@pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
@pytest.mark.usefixtures("namespaces_with_multicast")
def test_netns_demo_survives_a_pulled_cable() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "EM_DEMO_PREFIX": DEMO_PREFIX}
    demo = subprocess.Popen(
        ["bash", EXAMPLES / "netns_demo.sh", "--quick"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        try:
            out, _ = demo.communicate(timeout=DEMO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # SIGTERM first: the script's trap removes what it made.
            demo.terminate()
            out, _ = demo.communicate(timeout=30)
            pytest.fail(f"netns_demo.sh did not finish within {DEMO_TIMEOUT_S:.0f} s:\n{out}")
        if demo.returncode == 77:
            pytest.skip(f"netns_demo.sh cannot run here: {out.strip().splitlines()[-1]}")
        assert demo.returncode == 0, out
        assert "mesh of three formed" in out, out
        assert "h1 and h2 declared h3 dead" in out, out
        assert "h3 alive again on every node" in out, out
        done = re.search(r"load \| done: (\d+) sent, (\d+) answered, (\d+) failed", out)
        assert done is not None, out
        sent, answered, failed = map(int, done.groups())
        assert answered == sent and failed == 0, out
        # The load ran on all three nodes.
        ran_on = re.search(r"load \| done: .*; ran on: (.*)$", out, re.MULTILINE)
        assert ran_on is not None and all(h in ran_on.group(1) for h in ("h1", "h2", "h3")), out
        assert "cleaned up" in out, out
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
        _sweep_demo(DEMO_PREFIX)
    leftovers = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    assert DEMO_PREFIX not in leftovers, leftovers
