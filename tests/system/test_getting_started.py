"""A newcomer's first commands say what they do (issue 20): a bare ``make``
lists the targets, the first install says what it is doing and shows pip's
progress, and the example that needs ``onnx`` says how to get it in one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.system

STAMP = ".venv/.installed-stamp"


def make(*args: str, ci: bool = False) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MAKEFLAGS", "MAKELEVEL")}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def phony_targets() -> list[str]:
    makefile = (REPO / "Makefile").read_text()
    (line,) = re.findall(r"^\.PHONY:(.*)$", makefile, re.MULTILINE)
    return str(line).split()


def test_a_bare_make_lists_every_target_with_a_line_each() -> None:
    result = make()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "make TARGET, where TARGET is one of:", result.stdout
    described = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines[1:]}
    assert set(described) == set(phony_targets()), result.stdout
    for target in ("demo", "test", "core-minimal", "bench"):
        assert len(described[target]) > 10, result.stdout


def test_the_first_install_says_what_it_does_and_shows_pips_progress() -> None:
    # A dry run (-n) of the install step, forced (-B): the commands, not run.
    recipe = make("-n", "-B", STAMP).stdout.splitlines()
    said = [line for line in recipe if line.startswith("echo ")]
    assert said == [
        "echo 'installing edgemesh and its dependencies into .venv "
        "(first run only, about a minute)...'"
    ], recipe
    (install,) = [line for line in recipe if "pip install" in line and ".[test]" in line]
    assert "--quiet" not in install, install
    assert recipe.index(said[0]) < recipe.index(install)
    # In CI, pip's lines without its redrawn progress bar.
    (in_ci,) = [line for line in make("-n", "-B", STAMP, ci=True).stdout.splitlines()
                if ".[test]" in line]  # fmt: skip
    assert "--progress-bar off" in in_ci, in_ci


def test_the_examples_extra_brings_onnx() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert "onnx>=1.16" in extras["examples"]
    example = (REPO / "examples" / "bring_your_own_model.py").read_text()
    readme = (REPO / "README.md").read_text()
    for text in (example[: example.index('"""', 3)], readme):
        assert "edgemesh[examples]" in text


def test_bring_your_own_model_without_onnx_says_so_in_one_line() -> None:
    # onnx made unimportable, as in a venv from a plain `pip install -e .`.
    script = REPO / "examples" / "bring_your_own_model.py"
    runner = (
        "import runpy, sys; sys.modules['onnx'] = None; "
        f"sys.argv = [{str(script)!r}]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", runner],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "bring_your_own_model.py needs the onnx package to build its model: "
        "pip install -e '.[examples]' (or pip install 'edgemesh[examples]')"
    ], result.stderr
    assert not (REPO / "my-models").exists()
