"""``edgemesh drain``: ask a running node to shut down gracefully, as SIGTERM would.

The node stops taking new requests (they get ``Draining``, which clients
fail over on), hands its queued work to peers, finishes and answers what it
holds, tells its peers it is leaving, and exits within its
``--drain-timeout``. With a mesh key, only a caller holding the key may ask.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from mesh.config import DEFAULT_RPC_PORT, RpcConfig, mesh_key_from
from mesh.core.wire.addresses import parse_address
from mesh.errors import ConfigError, ProtocolError, RpcTimeout
from mesh.rpc import RpcClient

__all__ = ["add_drain_command"]

# Beyond the node's own drain timeout, how long --wait allows for its goodbyes.
_WAIT_MARGIN_S = 5.0


def add_drain_command(commands: Any) -> None:
    """Add ``drain`` to the ``edgemesh`` subcommands."""
    drain = commands.add_parser(
        "drain",
        help="ask a node to shut down gracefully (as SIGTERM does)",
        description=(
            "Ask a running node to drain: it refuses new requests (clients fail over), hands "
            "its queued work to peers, answers what it holds, tells its peers it is leaving, "
            "and exits within its --drain-timeout. With a mesh key only a caller holding it "
            "may ask."
        ),
    )
    drain.add_argument(
        "--node",
        default=f"127.0.0.1:{DEFAULT_RPC_PORT}",
        metavar="HOST:PORT",
        help=f"the node to drain (default: 127.0.0.1:{DEFAULT_RPC_PORT})",
    )
    drain.add_argument(
        "--mesh-key-file", metavar="FILE", help="the mesh key (or set EDGEMESH_MESH_KEY)"
    )
    drain.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="wait this long for it"
    )
    drain.add_argument(
        "--wait",
        action="store_true",
        help="return only once the node has finished draining and closed our connection",
    )
    drain.set_defaults(command="drain", handler=_cmd_drain)


def _cmd_drain(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    key = mesh_key_from(key_file=args.mesh_key_file, environ=environ)
    try:
        host, port = parse_address(args.node, default_port=DEFAULT_RPC_PORT)
    except ValueError as exc:
        raise ConfigError(f"--node: {exc}") from None
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    reply = asyncio.run(_drain(host, port, key, args.timeout, wait=args.wait))
    owned = reply.get("owned")
    print(
        f"node {reply.get('name')} is draining: {owned} requests to answer, "
        f"at most {reply.get('drain_timeout_s')} s" + ("; it has finished" if args.wait else "")
    )
    return 0


async def _drain(
    host: str, port: int, key: bytes | None, timeout: float, *, wait: bool
) -> dict[str, Any]:
    config = RpcConfig(call_timeout_s=timeout, connect_timeout_s=timeout)
    async with RpcClient(host, port, config=config, key=key) as client:
        reply = await client.call("drain", [], timeout=timeout)
        if not isinstance(reply, dict):
            raise ProtocolError(f"drain answered {type(reply).__name__}; expected a map")
        if wait:
            limit = float(reply.get("drain_timeout_s") or 0) + _WAIT_MARGIN_S
            try:
                async with asyncio.timeout(limit):
                    await client.connection.wait_closed()
            except TimeoutError:
                raise RpcTimeout(f"{host}:{port} was still draining after {limit:g} s") from None
        return reply
