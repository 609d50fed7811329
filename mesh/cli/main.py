"""The ``edgemesh`` command line: one parser, a module per command family.

Subcommands: ``node`` (run a node), ``gateway`` (run a cloud gateway),
``infer``, ``models`` and ``status`` (talk to a running node), ``demo`` (see
it all work on this machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mesh._version import __version__
from mesh.cli.client_commands import add_client_commands
from mesh.cli.demo_command import add_demo_command
from mesh.cli.gateway_command import add_gateway_command
from mesh.cli.node_command import add_node_command
from mesh.errors import ConfigError, MeshError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args, os.environ)
    except ConfigError as exc:
        print(f"edgemesh: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except MeshError as exc:
        print(f"edgemesh: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output (head, less) has gone: nothing left to say.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result


# --- argument parsing ---------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemesh",
        description="A peer-to-peer ONNX inference mesh for the devices you already own.",
    )
    parser.add_argument("--version", action="version", version=f"edgemesh {__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_node_command(commands)
    add_client_commands(commands)
    add_demo_command(commands)
    add_gateway_command(commands)
    return parser
