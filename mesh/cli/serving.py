"""What ``edgemesh node`` and ``edgemesh gateway`` share: their model and log flags,
and running a server until SIGINT or SIGTERM stops it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any, Protocol

from mesh.cli.logs import configure_logging

__all__ = ["Server", "add_log_flags", "add_model_flags", "flags_of", "serve"]


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


class Server(Protocol):
    """A node or a gateway: runs until stopped."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as settings: everything but the config file and the handler."""
    return {key: value for key, value in vars(args).items() if key not in {"config", "handler"}}


def serve(log_level: str, log_format: str, make: Callable[[], Server]) -> int:
    """Run the server ``make`` builds (inside the loop) until SIGINT or SIGTERM stops it."""
    configure_logging(log_level, log_format)
    asyncio.run(_run_until_signalled(make))
    return 0


async def _run_until_signalled(make: Callable[[], Server]) -> None:
    server = make()
    loop = asyncio.get_running_loop()
    # Either signal asks for a clean stop (goodbyes said, ports freed, exit
    # status 0) rather than a KeyboardInterrupt traceback mid-request.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.stop)
    try:
        await server.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
