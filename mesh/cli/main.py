"""The ``edgemesh`` command line: one parser, a module per command family.

Subcommands: ``node`` (run a node), ``gateway`` (run a cloud gateway),
``infer``, ``models`` and ``status`` (talk to a running node; ``models pull``
and ``models push`` give it a model), ``drain`` (shut
a node down gracefully), ``demo`` (see it all work on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from mesh._version import __version__
from mesh.cli.client_commands import add_client_commands
from mesh.cli.demo_command import add_demo_command
from mesh.cli.drain_command import add_drain_command
from mesh.cli.gateway_command import add_gateway_command
from mesh.cli.model_commands import add_model_commands
from mesh.cli.node_command import add_node_command
from mesh.errors import AddressInUse, AddressUnavailable, ConfigError, MeshError, NameTaken

__all__ = ["EXIT_STATUSES", "main", "sole_mesh_error"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        try:
            result: int = args.handler(args, os.environ)
        except BaseExceptionGroup as group:
            # A server's TaskGroup wraps what one of its tasks raised (mDNS
            # finding our name taken): one MeshError is said as one line.
            sole = sole_mesh_error(group)
            if sole is None:
                raise
            raise sole from None
    except MeshError as exc:
        return _report(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output (head, less) has gone: nothing left to say.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result


# --- errors and exit statuses --------------------------------------------------

# The exit status of each kind of error, most specific first (README, "Exit
# statuses"). Start-up errors name the flag to change in their message.
EXIT_STATUSES: tuple[tuple[type[MeshError], int], ...] = (
    (AddressInUse, 3),
    (AddressUnavailable, 4),
    (NameTaken, 5),
    (ConfigError, 2),
    (MeshError, 1),
)
_START_UP = (AddressInUse, AddressUnavailable, NameTaken)


def _report(exc: MeshError) -> int:
    """Say ``exc`` in one line on stderr; its exit status."""
    if isinstance(exc, _START_UP):
        line = exc.message
    elif isinstance(exc, ConfigError):
        line = f"configuration error: {exc.message}"
    else:
        line = f"{exc.code}: {exc.message}"
    # One line even when a message quotes something with a newline in it.
    print("edgemesh: " + " ".join(line.splitlines()), file=sys.stderr)
    return next(status for kind, status in EXIT_STATUSES if isinstance(exc, kind))


def sole_mesh_error(group: BaseExceptionGroup[BaseException]) -> MeshError | None:
    """The one MeshError ``group`` holds, however deeply nested, ignoring the
    cancellations it caused; None when it holds anything else or more."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, asyncio.CancelledError):
            leaves.append(exc)
    if len(leaves) == 1 and isinstance(leaves[0], MeshError):
        return leaves[0]
    return None


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
    # `models pull` and `models push` live under `models`, which lists.
    add_model_commands(commands.choices["models"])
    add_demo_command(commands)
    add_gateway_command(commands)
    add_drain_command(commands)
    return parser
