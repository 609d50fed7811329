"""What ``edgemesh node`` and ``edgemesh gateway`` share: their model, log and drain
flags, and running a server until SIGINT or SIGTERM stops it.

The first signal drains the server (it takes nothing new, finishes and hands
off what it has, and exits within its drain timeout); a second one stops it
at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any, Protocol

from mesh.cli.logs import configure_logging
from mesh.config.settings import DEFAULT_DRAIN_TIMEOUT_S

__all__ = ["Server", "add_drain_flag", "add_log_flags", "add_model_flags", "flags_of", "serve"]


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose models and size the onnxruntime executor."""
    parser.add_argument(
        "--models",
        action="append",
        metavar="DIR",
        help="a directory of .onnx models (repeatable; default: the bundled models)",
    )
    parser.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="serve only this model (repeatable; default: every model found)",
    )
    parser.add_argument(
        "--intra-op-threads", metavar="N", help="onnxruntime threads per call (default: 1)"
    )
    parser.add_argument(
        "--per-model-concurrency",
        metavar="N",
        help="calls of one model running at once (default: CPU count)",
    )
    parser.add_argument(
        "--executor-threads", metavar="N", help="worker threads for all models (default: CPUs)"
    )


def add_log_flags(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format."""
    parser.add_argument("--log-level", help="debug, info, warning or error (default: info)")
    parser.add_argument("--log-format", help="text or json (default: text)")


def add_drain_flag(parser: argparse.ArgumentParser) -> None:
    """--drain-timeout."""
    parser.add_argument(
        "--drain-timeout",
        metavar="SECONDS",
        help="on SIGTERM/SIGINT: how long to finish and hand off what is in flight before "
        f"exiting anyway; a second signal exits at once (default: {DEFAULT_DRAIN_TIMEOUT_S:g})",
    )


class Server(Protocol):
    """A node or a gateway: runs until stopped or drained."""

    async def run(self) -> None: ...

    def drain(self) -> None: ...

    def stop(self) -> None: ...


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as settings: everything but the config file and the handler."""
    return {key: value for key, value in vars(args).items() if key not in {"config", "handler"}}


def serve(log_level: str, log_format: str, make: Callable[[], Server]) -> int:
    """Run the server ``make`` builds (inside the loop) until it drains on SIGINT or
    SIGTERM, or stops on the second one."""
    configure_logging(log_level, log_format)
    asyncio.run(_run_until_signalled(make))
    return 0


async def _run_until_signalled(make: Callable[[], Server]) -> None:
    server = make()
    loop = asyncio.get_running_loop()
    signals = 0

    def signalled() -> None:
        # The first signal drains: nothing in flight is dropped, goodbyes are
        # said, ports are freed, exit status 0 (not a KeyboardInterrupt
        # traceback mid-request). A second one means "now".
        nonlocal signals
        signals += 1
        if signals == 1:
            server.drain()
        else:
            server.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, signalled)
    # A node rescans its model directories on SIGHUP (see mesh.node.model_store).
    reload: Callable[[], None] | None = getattr(server, "reload", None)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await server.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if reload is not None:
            loop.remove_signal_handler(signal.SIGHUP)
