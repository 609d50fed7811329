"""``edgemesh demo``: see a mesh share a burst on this machine."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

__all__ = ["add_demo_command"]


def add_demo_command(commands: Any) -> None:
    """Add ``demo`` to the ``edgemesh`` subcommands."""
    demo = commands.add_parser(
        "demo",
        help="see a mesh share a burst on this machine: three devices and a gateway",
        description=(
            "Start three nodes emulating devices of different speeds and a cloud gateway, "
            "all on 127.0.0.1 with a fresh mesh key (mDNS on 127.0.0.1 only), send every "
            "held-out handwritten digit at once to the slowest node, and show where each "
            "ran (locally, stolen by a faster device, or handed to the gateway), accuracy "
            "and latency. Every process is stopped at the end, even on Ctrl-C."
        ),
    )
    demo.add_argument("--samples", type=int, metavar="N", help="classify only the first N digits")
    demo.add_argument(
        "--deadline-ms",
        type=float,
        default=1000.0,
        metavar="MS",
        help="each request's deadline; the mesh hands to the gateway what it cannot finish "
        "in time (default: 1000)",
    )
    demo.add_argument(
        "--no-gateway",
        action="store_true",
        help="start no gateway: the requests the mesh cannot finish in time are refused",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep the processes' logs and files here (default: a temporary directory)",
    )
    demo.set_defaults(command="demo", handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from mesh.demo.run import run_demo

    del environ
    if args.samples is not None and args.samples <= 0:
        raise ConfigError("--samples must be a positive number")
    if not args.deadline_ms > 0:
        raise ConfigError("--deadline-ms must be a positive number")
    return run_demo(
        samples=args.samples,
        deadline_ms=args.deadline_ms,
        gateway=not args.no_gateway,
        workdir=args.workdir,
    )
