"""Finding nodes for the SDK with mDNS: browse only, never announce.

A node's :class:`~mesh.mdns.MdnsDiscovery` both announces and browses;
a client must not announce (it is not a node), so it browses here with the
same rules: records are checked by :func:`~mesh.core.membership.adverts.parse_advert`,
``interfaces`` limits which networks are heard and which addresses are
kept, and only nodes of the wanted mesh are returned. An advert is an
unauthenticated hint: the client's handshake still checks the mesh key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from zeroconf import (
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser

from mesh.core.membership.adverts import SERVICE_TYPE, Advert
from mesh.core.wire.addresses import format_address, on_networks
from mesh.errors import ProtocolError
from mesh.mdns import (
    RESOLVE_TIMEOUT,
    check_interfaces,
    hear_only_joined_groups,
    interface_networks,
    open_zeroconf,
    resolve_advert,
)

__all__ = ["browse_nodes", "node_address"]

log = logging.getLogger(__name__)


async def browse_nodes(
    *, mesh_id: str, interfaces: Sequence[str] | None, wait_s: float
) -> list[Advert]:
    """The nodes of mesh ``mesh_id`` that answer mDNS within ``wait_s`` seconds, by name.

    ``interfaces`` lists the IP addresses to browse on (None: every
    interface); only addresses on their networks are kept. Gateways,
    nodes of other meshes and malformed records are left out.
    """
    checked = None if interfaces is None else check_interfaces(interfaces)
    networks = None if checked is None else interface_networks(checked)
    zc = open_zeroconf(checked)
    try:
        await zc.zeroconf.async_wait_for_start()
        if checked is not None:
            hear_only_joined_groups(zc.zeroconf)
        names: set[str] = set()

        def on_change(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            if state_change is ServiceStateChange.Removed:
                names.discard(name)
            else:
                names.add(name)

        browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        try:
            # Every responder answers the browse query within about a second
            # (RFC 6762 delays answers by up to 120 ms, repeats the query after 1 s).
            await asyncio.sleep(wait_s)
        finally:
            await browser.async_cancel()
        async with asyncio.TaskGroup() as tasks:
            resolving = [tasks.create_task(_resolve(zc.zeroconf, name)) for name in sorted(names)]
    finally:
        await zc.async_close()
    found: list[Advert] = []
    for task in resolving:
        advert = task.result()
        if advert is None or advert.role != "node" or advert.mesh_id != mesh_id:
            continue
        addresses = advert.addresses
        if networks is not None:
            addresses = tuple(a for a in addresses if on_networks(networks, a))
        if addresses:
            found.append(dataclasses.replace(advert, addresses=addresses))
    return found


def node_address(advert: Advert) -> str:
    """``"host:port"`` of a discovered node's RPC service (its first address)."""
    return format_address(advert.addresses[0], advert.rpc_port)


async def _resolve(zeroconf: Zeroconf, name: str) -> Advert | None:
    try:
        advert = await resolve_advert(zeroconf, name, RESOLVE_TIMEOUT)
    except ProtocolError as exc:
        log.info("ignoring mDNS record %r: %s", name, exc.message)
        return None
    if advert is None:
        log.debug("ignoring mDNS record %r: no complete answer", name)
    return advert
