"""``edgemesh gateway``: run the cloud gateway, an Open Inference Protocol server."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.cli.limit_flags import add_gateway_limit_flags
from mesh.cli.serving import (
    Server,
    add_drain_flag,
    add_log_flags,
    add_model_flags,
    flags_of,
    serve,
)
from mesh.config import DEFAULT_GATEWAY_PORT, load_gateway_config

__all__ = ["add_gateway_command"]


def add_gateway_command(commands: Any) -> None:
    """Add ``gateway`` to the ``edgemesh`` subcommands."""
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
    add_model_flags(gateway)
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
        "--upstream-token-file",
        metavar="FILE",
        help="file holding the bearer token sent with every request to the upstream",
    )
    gateway.add_argument(
        "--upstream-ca-file",
        metavar="FILE",
        help="for an https:// upstream: trust only the certificates this PEM file vouches for",
    )
    gateway.add_argument(
        "--http-token-file",
        metavar="FILE",
        help="file holding a bearer token every request must carry "
        "(Authorization: Bearer TOKEN; all but /v2/health/live); default: none checked",
    )
    gateway.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve HTTPS with this PEM certificate chain (with --tls-key)",
    )
    gateway.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
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
        "--max-body-bytes", metavar="N", help="largest request body, else 413 (default: 64 MiB)"
    )
    gateway.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {name, host, http_port} as JSON here once listening",
    )
    add_drain_flag(gateway)
    add_gateway_limit_flags(gateway)
    add_log_flags(gateway)
    gateway.set_defaults(command="gateway", handler=_cmd_gateway)


def _cmd_gateway(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config = load_gateway_config(flags_of(args), environ, args.config)

    def make() -> Server:
        # Imported here so that client commands start fast, without onnxruntime.
        from mesh.gateway.server import Gateway

        return Gateway(config)

    return serve(config.log_level, config.log_format, make)
