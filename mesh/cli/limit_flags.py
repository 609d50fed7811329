"""The flags that bound what strangers and big requests may cost (see README, Security).

Each is also a TOML key and an ``EDGEMESH_`` variable (mesh.config.limits);
most users never need them, so they sit in a group of their own.
"""

from __future__ import annotations

import argparse

__all__ = ["add_gateway_limit_flags", "add_node_limit_flags"]

_NODE_FLAGS = {
    "--preauth-max-bytes": "bytes a connection may send before it passes the mesh-key "
    "handshake (default: 8192)",
    "--handshake-timeout": "seconds a connection has to pass the handshake (default: 5)",
    "--max-unauthenticated": "connections waiting for their handshake at once (default: 256)",
    "--max-unauthenticated-per-source": "of those, from one address (default: 32)",
    "--auth-failure-burst": "failed handshakes one address may make in a row before it "
    "must wait (default: 10)",
    "--auth-failures-per-s": "failed handshakes per second one address may make after "
    "the burst (default: 1)",
    "--idle-timeout": "seconds an RPC connection may send nothing before it is closed "
    "(default: 600)",
    "--message-timeout": "seconds one RPC message may take to arrive (default: 120)",
    "--max-bytes-in-flight": "bytes of received, unanswered requests held at once over "
    "all connections, RPC and HTTP; more are refused with Overloaded (default: 256 MiB)",
    "--http-max-json-bytes": "largest JSON part of an HTTP request; bigger tensors go "
    "in the binary tensor extension (default: 1 MiB)",
    "--http-idle-timeout": "seconds an HTTP connection may go without sending a complete "
    "request's headers (default: 30)",
    "--http-body-timeout": "seconds an HTTP request body has to arrive (default: 30)",
}
_GATEWAY_FLAGS = {
    "--max-json-bytes": "largest JSON part of a request; bigger tensors go in the binary "
    "tensor extension (default: 1 MiB)",
    "--idle-timeout": "seconds a connection may go without sending a complete request's "
    "headers (default: 30)",
    "--body-timeout": "seconds a request body has to arrive (default: 30)",
    "--max-bytes-in-flight": "bytes of request bodies held at once; more are refused "
    "with 503 (default: 256 MiB)",
}


def _add(parser: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    group = parser.add_argument_group(
        "limits", "what unauthenticated, slow or large traffic may cost (rarely changed)"
    )
    for flag, help_text in flags.items():
        group.add_argument(flag, metavar="N", help=help_text)


def add_node_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The node's limit flags."""
    _add(parser, _NODE_FLAGS)


def add_gateway_limit_flags(parser: argparse.ArgumentParser) -> None:
    """The gateway's limit flags."""
    _add(parser, _GATEWAY_FLAGS)
