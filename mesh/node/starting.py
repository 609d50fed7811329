"""What a node checks, derives and says once, as it starts.

Before it serves: its addresses are claimed (ports bound, mDNS interfaces
checked), a node given no name is named, and the scheduler's figures are
derived from the config. Once it listens: the log line, the ready file, the
mDNS advert and the gateway check. Apart from :mod:`mesh.node.node`, which
wires the running parts together, because these are one-shot steps on the
config with no state of their own.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Sequence

from mesh._version import __version__
from mesh.config import DEFAULT_RPC_PORT, NodeConfig
from mesh.core.membership.adverts import Advert
from mesh.core.scheduling.jobs import SchedulerConfig
from mesh.core.wire.addresses import default_node_name, mdns_interfaces
from mesh.gateway.client import GatewayClient
from mesh.listening import write_ready_file
from mesh.mdns import check_own_addresses
from mesh.node.http_face import claim_ports

__all__ = [
    "advert",
    "announce",
    "check_gateway",
    "claim_addresses",
    "scheduler_config",
    "warn_if_open",
]

# The node's own lines, under the node's logger: operators (and tests) set
# its level by that name, wherever the code that says them lives.
log = logging.getLogger("mesh.node.node")


def claim_addresses(config: NodeConfig) -> tuple[NodeConfig, list[socket.socket]]:
    """Bind the node's ports (RPC, then HTTP with --http-port) and check its
    mDNS interfaces are this machine's; the config, named if it had no name."""
    interfaces = config.mesh.interfaces
    # mDNS on --host's own address is checked by binding it, naming --host.
    if (
        config.mesh.mdns
        and interfaces is not None
        and interfaces != mdns_interfaces(config.host, None)
    ):
        check_own_addresses(interfaces)
    listeners = claim_ports(config)
    return _name_by_port(config, listeners), listeners


def _name_by_port(config: NodeConfig, listeners: list[socket.socket]) -> NodeConfig:
    """Say what a node given no name is called; with port 0, add the port it bound."""
    if not config.name_from_host:
        return config
    if config.port == 0:
        bound = listeners[0].getsockname()[1]
        name = default_node_name(config.name, bound, default_port=DEFAULT_RPC_PORT)
        config = dataclasses.replace(config, name=name)
    log.info("no --name given: calling this node %r", config.name)
    return config


def warn_if_open(config: NodeConfig, port: int) -> None:
    """Warn, loudly, that a node without a mesh key serves anyone who can reach it."""
    if config.mesh_key is None:
        log.warning(
            "node %s runs an OPEN mesh: anyone who can reach %s:%d can use it. "
            "Give every node the same --mesh-key-file to close it.",
            config.name,
            config.host,
            port,
        )


def scheduler_config(config: NodeConfig, threads: int) -> SchedulerConfig:
    """The scheduler's figures: ``threads`` is the runtime's, the slots when none are set."""
    work = config.work
    slots = work.slots or threads
    queue_cap = config.fallback.queue_cap
    if work.emulation is not None:
        # An emulated device runs `slots` calls at once and no more; a
        # deeper hand-off would count waiting calls as running.
        return SchedulerConfig(slots=slots, steal=work.steal, solo_depth=slots, queue_cap=queue_cap)
    return SchedulerConfig(slots=slots, steal=work.steal, queue_cap=queue_cap)


def advert(
    config: NodeConfig, *, node_id: str, mesh_id: str, rpc_port: int, http_port: int | None
) -> Advert:
    """What the node says about itself over mDNS (no HTTP port others cannot reach)."""
    return Advert(
        name=config.name,
        id=node_id,
        version=__version__,
        rpc_port=rpc_port,
        http_port=http_port if config.http_reachable() else None,
        role="node",
        mesh_id=mesh_id,
    )


def announce(
    config: NodeConfig,
    *,
    node_id: str,
    mesh_id: str,
    port: int,
    http_port: int | None,
    models: Sequence[str],
) -> None:
    """Log that the node listens, and write the ready file if one was asked for."""
    log.info(
        "node %s (%s) listening on %s:%d with models %s; mesh %s",
        config.name,
        node_id,
        config.host,
        port,
        ", ".join(models) or "(none)",
        mesh_id,
    )
    if config.ready_file is not None:
        info = {
            "name": config.name,
            "id": node_id,
            "host": config.host,
            "rpc_port": port,
            "http_port": http_port,
        }
        write_ready_file(config.ready_file, info)


async def check_gateway(gateway: GatewayClient) -> None:
    """Log once, at start, whether the ``--gateway`` URL answers."""
    ok, line = await gateway.check()
    if ok:
        log.info("%s", line)
    else:
        log.warning("%s", line)
