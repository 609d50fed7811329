"""The ``edgemesh`` command line: argparse in, configuration out, then asyncio.run.

Subcommands: ``node`` (run a node), ``gateway`` (run a cloud gateway),
``infer``, ``models`` and ``status`` (talk to a running node), ``demo`` (see
it all work on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from mesh._version import __version__
from mesh.cli.client_commands import add_client_commands
from mesh.cli.logs import configure_logging
from mesh.config import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_RPC_PORT,
    load_gateway_config,
    load_node_config,
)
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

    node = commands.add_parser(
        "node",
        help="run a node that serves ONNX models",
        description=(
            "Run an edgemesh node. It loads the ONNX models of its model directories "
            "(the bundled ones by default) and serves them over msgpack-RPC. "
            "Settings come from --config FILE, then EDGEMESH_* variables, then flags."
        ),
    )
    node.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    node.add_argument("--name", help="this node's name in the mesh (default: the hostname)")
    node.add_argument("--host", help="address to listen on (default: 0.0.0.0, every interface)")
    node.add_argument("--port", help=f"RPC port (default: {DEFAULT_RPC_PORT}; 0 picks a free port)")
    node.add_argument(
        "--models",
        action="append",
        metavar="DIR",
        help="a directory of .onnx models (repeatable; default: the bundled models)",
    )
    node.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="serve only this model (repeatable; default: every model found)",
    )
    node.add_argument(
        "--mesh-key-file",
        metavar="FILE",
        help="file holding the mesh's shared key (or set EDGEMESH_MESH_KEY); "
        "without a key the node is open to anyone who can reach it",
    )
    node.add_argument(
        "--peer",
        action="append",
        metavar="HOST:PORT",
        help="a bootstrap peer (repeatable); one is enough, peers share what they know. "
        "Use where mDNS cannot work: Wi-Fi client isolation, VLANs, containers",
    )
    node.add_argument(
        "--no-mdns",
        dest="mdns",
        action="store_const",
        const=False,
        help="do not use mDNS to find peers (use --peer instead)",
    )
    node.add_argument(
        "--interface",
        action="append",
        metavar="IP",
        help="bind mDNS to this interface address only (repeatable; default: all). "
        "Local demos and tests use --interface 127.0.0.1",
    )
    node.add_argument(
        "--gossip-interval",
        metavar="SECONDS",
        help="how often to tell peers we are alive, and how loaded (default: 0.2)",
    )
    node.add_argument(
        "--suspect-after",
        metavar="SECONDS",
        help="silence before a peer is suspected (default: 0.8)",
    )
    node.add_argument(
        "--dead-after",
        metavar="SECONDS",
        help="suspicion before a peer is declared dead (default: 0.6)",
    )
    node.add_argument(
        "--forget-after",
        metavar="SECONDS",
        help="how long a dead peer is remembered (default: 30)",
    )
    node.add_argument(
        "--intra-op-threads", metavar="N", help="onnxruntime threads per call (default: 1)"
    )
    node.add_argument(
        "--per-model-concurrency",
        metavar="N",
        help="calls of one model running at once (default: CPU count)",
    )
    node.add_argument(
        "--executor-threads", metavar="N", help="worker threads for all models (default: CPUs)"
    )
    node.add_argument(
        "--max-message-bytes", metavar="N", help="largest RPC message (default: 64 MiB)"
    )
    node.add_argument(
        "--max-in-flight-per-connection",
        metavar="N",
        help="concurrent requests per connection before Overloaded (default: 1024)",
    )
    node.add_argument(
        "--slots",
        metavar="N",
        help="requests this node runs at once (default: one per executor thread)",
    )
    node.add_argument(
        "--no-steal",
        dest="steal",
        action="store_const",
        const=False,
        help="do not share work: run only what enters this node, and give none away",
    )
    node.add_argument(
        "--http-port",
        metavar="PORT",
        help="also serve the Open Inference Protocol (KServe V2 REST) on this port "
        "(0 picks a free port; default: no HTTP)",
    )
    node.add_argument(
        "--gateway",
        metavar="URL",
        help="cloud gateway (any Open Inference Protocol server) for requests the mesh "
        "cannot serve in time or at all (default: none; such requests get Overloaded)",
    )
    node.add_argument(
        "--gateway-timeout",
        metavar="SECONDS",
        help="longest wait for the gateway when a request has no deadline (default: 30)",
    )
    node.add_argument(
        "--default-deadline-ms",
        metavar="MS",
        help="for a request that gives no deadline: the mesh must be able to finish it "
        "within this, or it goes to the gateway (or is refused); it is not dropped when "
        "this passes (default: 2000)",
    )
    node.add_argument(
        "--queue-cap",
        metavar="N",
        help="requests queued on this node at most before new ones go to the gateway "
        "(default: 1024)",
    )
    node.add_argument(
        "--emulate-speed",
        metavar="F",
        help="for experiments: behave like a device F times as fast as the reference "
        "(the real model runs; the call is padded to --emulate-service-ms / F)",
    )
    node.add_argument(
        "--emulate-service-ms",
        metavar="MS",
        help="for experiments: the reference device's time per call (default: 20)",
    )
    node.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {name, id, host, rpc_port} as JSON here once listening",
    )
    _add_log_flags(node)
    node.set_defaults(command="node", handler=_cmd_node)

    add_client_commands(commands)

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
    _add_gateway_parser(commands)
    return parser


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", help="debug, info, warning or error (default: info)")
    parser.add_argument("--log-format", help="text or json (default: text)")


# --- node ---------------------------------------------------------------------


def _cmd_node(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config = load_node_config(_flags(args), environ, args.config)

    def make() -> _Server:
        # Imported here so that client commands start fast, without onnxruntime.
        from mesh.node.node import Node

        return Node(config)

    return _serve(config.log_level, config.log_format, make)


# --- gateway ------------------------------------------------------------------


def _add_gateway_parser(commands: Any) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="run a cloud gateway: an Open Inference Protocol (V2 REST) server",
        description=(
            "Run the cloud gateway nodes hand requests to when the mesh is saturated. "
            "It serves the ONNX models of its model directories with onnxruntime, or, "
            "with --upstream, forwards every request to another Open Inference Protocol "
            "server (Triton, KServe, MLServer). Settings come from --config FILE, then "
            "EDGEMESH_GATEWAY_* variables, then flags."
        ),
    )
    gateway.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    gateway.add_argument("--name", help="the gateway's name in answers and logs (default: gateway)")
    gateway.add_argument("--host", help="address to listen on (default: 0.0.0.0, every interface)")
    gateway.add_argument(
        "--port", help=f"HTTP port (default: {DEFAULT_GATEWAY_PORT}; 0 picks a free port)"
    )
    gateway.add_argument(
        "--models",
        action="append",
        metavar="DIR",
        help="a directory of .onnx models (repeatable; default: the bundled models)",
    )
    gateway.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="serve only this model (repeatable; default: every model found)",
    )
    gateway.add_argument(
        "--upstream",
        metavar="URL",
        help="forward every request to this Open Inference Protocol server "
        "(http://host:port) instead of running models here",
    )
    gateway.add_argument(
        "--upstream-timeout",
        metavar="SECONDS",
        help="longest wait for the upstream when a request has no deadline (default: 30)",
    )
    gateway.add_argument(
        "--upstream-max-in-flight",
        metavar="N",
        help="requests sent upstream at once before 503 (default: 256)",
    )
    gateway.add_argument(
        "--slots", metavar="N", help="requests run at once (default: one per executor thread)"
    )
    gateway.add_argument(
        "--queue-cap",
        metavar="N",
        help="requests waiting for a slot before more are refused with 503 (default: 1024)",
    )
    gateway.add_argument(
        "--emulate-service-ms",
        metavar="MS",
        help="for benchmarks: pad every call to MS milliseconds, so the gateway's capacity "
        "is --slots / MS (the real model runs and its outputs are returned)",
    )
    gateway.add_argument(
        "--intra-op-threads", metavar="N", help="onnxruntime threads per call (default: 1)"
    )
    gateway.add_argument(
        "--per-model-concurrency",
        metavar="N",
        help="calls of one model running at once (default: CPU count)",
    )
    gateway.add_argument(
        "--executor-threads", metavar="N", help="worker threads for all models (default: CPUs)"
    )
    gateway.add_argument(
        "--max-body-bytes", metavar="N", help="largest request body, else 413 (default: 64 MiB)"
    )
    gateway.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {name, host, http_port} as JSON here once listening",
    )
    _add_log_flags(gateway)
    gateway.set_defaults(command="gateway", handler=_cmd_gateway)


def _cmd_gateway(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config = load_gateway_config(_flags(args), environ, args.config)

    def make() -> _Server:
        # Imported here so that client commands start fast, without onnxruntime.
        from mesh.gateway.server import Gateway

        return Gateway(config)

    return _serve(config.log_level, config.log_format, make)


# --- running a server until a signal --------------------------------------------


class _Server(Protocol):
    """A node or a gateway: runs until stopped."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as settings: everything but the config file and the handler."""
    return {key: value for key, value in vars(args).items() if key not in {"config", "handler"}}


def _serve(log_level: str, log_format: str, make: Callable[[], _Server]) -> int:
    """Run the server ``make`` builds (inside the loop) until SIGINT or SIGTERM stops it."""
    configure_logging(log_level, log_format)
    asyncio.run(_run_until_signalled(make))
    return 0


async def _run_until_signalled(make: Callable[[], _Server]) -> None:
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


# --- demo ---------------------------------------------------------------------


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
