"""The command line a newcomer meets: every command explains itself, and every node flag
has its TOML key and environment variable (the same name, resolved in one place)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import json
import logging
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from mesh.cli.logs import configure_logging
from mesh.cli.main import _parser, main, sole_mesh_error
from mesh.config import GATEWAY_SETTING_KEYS, NODE_SETTING_KEYS, load_node_config
from mesh.errors import (
    AddressInUse,
    AddressUnavailable,
    ConfigError,
    MeshError,
    NameTaken,
    Overloaded,
)
from tests.helpers import REPO

COMMANDS = ("node", "gateway", "infer", "models", "status", "demo")
# Flags that are not settings: the file itself, and argparse's own.
NOT_SETTINGS = {"config", "help", "handler", "command"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("edgemesh has no subcommands")


def setting_dests(command: str) -> set[str]:
    parser = subcommands()[command]
    return {a.dest for a in parser._actions if a.dest not in NOT_SETTINGS}


def test_every_command_exists() -> None:
    assert set(COMMANDS) <= set(subcommands())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_a_newcomer_can_read(command: str) -> None:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = out.getvalue()
    assert text.startswith(f"usage: edgemesh {command}")
    # A sentence saying what the command does, and every option explained.
    parser = subcommands()[command]
    assert parser.description and len(parser.description) > 40
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented, undocumented


def test_no_command_prints_the_overview() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([]) == 2
    for command in COMMANDS:
        assert command in out.getvalue()


def test_every_node_flag_is_a_toml_key_and_an_environment_variable() -> None:
    # load_node_config reads exactly NODE_SETTING_KEYS from TOML and from
    # EDGEMESH_<KEY>; a flag without a key would be command-line only.
    assert setting_dests("node") == set(NODE_SETTING_KEYS)


def test_every_gateway_flag_is_a_toml_key_and_an_environment_variable() -> None:
    assert setting_dests("gateway") == set(GATEWAY_SETTING_KEYS)


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        logging.getLogger("mesh.test").info("node %s ready", "kitchen-pi")
    finally:
        configure_logging("warning", "text")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "node kitchen-pi ready"
    assert entry["level"] == "info" and entry["logger"] == "mesh.test"


def test_text_logs_are_readable(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "text")
    try:
        logging.getLogger("mesh.test").warning("gateway down")
    finally:
        configure_logging("warning", "text")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith("WARNING mesh.test: gateway down")


def test_the_readme_node_toml_example_loads(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    key_file = tmp_path / "mesh.key"
    key_file.write_text("0123456789abcdef0123456789abcdef")
    config_file = tmp_path / "node.toml"
    config_file.write_text(example.replace("/etc/edgemesh/mesh.key", str(key_file)))
    config = load_node_config({}, {}, config_file)
    assert config.name == "kitchen-pi"
    assert config.gateway is not None and config.gateway.url == "http://cloud.example:8000"
    assert config.http.port == 8080
    assert config.fallback.default_deadline_ms == 1500
    assert config.log_format == "json"


# --- exit statuses (README, "Exit statuses") ----------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (AddressInUse("--port 7 is in use"), 3, "edgemesh: --port 7 is in use"),
        (
            AddressUnavailable("--host 1.2.3.4 is not ours"),
            4,
            "edgemesh: --host 1.2.3.4 is not ours",
        ),
        (NameTaken("choose another --name"), 5, "edgemesh: choose another --name"),
        (ConfigError("bad\nvalue"), 2, "edgemesh: configuration error: bad value"),
        (Overloaded("busy"), 1, "edgemesh: Overloaded: busy"),
    ],
)
@pytest.mark.parametrize("wrapped", [False, True])
def test_each_kind_of_error_is_one_line_and_its_own_exit_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: MeshError,
    status: int,
    line: str,
    wrapped: bool,
) -> None:
    # As a node's TaskGroup raises it: the error, beside the cancellations it caused.
    raised: BaseException = (
        BaseExceptionGroup("unhandled errors in a TaskGroup", [asyncio.CancelledError(), error])
        if wrapped
        else error
    )

    def handler(args: argparse.Namespace, environ: object) -> int:
        raise raised

    # A command whose handler fails so; the module, not the function it exports.
    parser = argparse.ArgumentParser()
    parser.set_defaults(command="test", handler=handler)
    monkeypatch.setattr(importlib.import_module("mesh.cli.main"), "_parser", lambda: parser)
    assert main([]) == status
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_group_of_several_errors_is_not_hidden() -> None:
    several = ExceptionGroup("two", [Overloaded("a"), ConfigError("b")])
    assert sole_mesh_error(several) is None
    assert sole_mesh_error(ExceptionGroup("bug", [ValueError("x")])) is None
    nested = BaseExceptionGroup("outer", [ExceptionGroup("inner", [NameTaken("n")])])
    assert isinstance(sole_mesh_error(nested), NameTaken)


def test_status_text_says_an_open_mesh_once_and_clearly() -> None:
    from mesh.cli.client_commands import status_text

    text = status_text({"name": "n", "mesh_id": "open", "auth": False, "peers": []})
    mesh_row = next(line for line in text.splitlines() if line.startswith("mesh "))
    assert mesh_row.split(None, 1)[1] == (
        "open: no mesh key, anyone who can reach this node may use it"
    )
    assert "OPEN" not in text
    assert text.endswith("no peers known")
