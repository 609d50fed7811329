"""Where the models a node can route to are: here, on live peers, on the gateway.

The edge half of ``models([{"scope": "mesh"}])``: it gathers what the node
knows (its runtime, gossip, one short question to the gateway) and hands it
to :func:`mesh.core.wire.catalog.mesh_view`, which shapes the reply.
"""

from __future__ import annotations

from typing import Any

from mesh.core.wire.catalog import GatewayModels, mesh_view
from mesh.errors import MeshError
from mesh.gateway.client import GatewayClient
from mesh.node.membership import MeshMembership
from mesh.runtime.runtime import Runtime

__all__ = ["gateway_models", "models_in_mesh"]


async def gateway_models(gateway: GatewayClient) -> GatewayModels:
    """The gateway's ready models, or why it did not list them (never raises a MeshError)."""
    try:
        entries = await gateway.repository_index()
    except MeshError as exc:
        return GatewayModels(url=gateway.url, error=exc.message)
    return GatewayModels(url=gateway.url, names=tuple(e.name for e in entries))


async def models_in_mesh(
    name: str,
    runtime: Runtime,
    membership: MeshMembership | None,
    gateway: GatewayClient | None,
) -> dict[str, Any]:
    """The mesh view of the node called ``name``: its models, its live peers', its gateway's."""
    peers = {} if membership is None else {m.name: m.load.models for m in membership.view.alive()}
    return mesh_view(
        here=name,
        local=[spec.to_wire() for spec in runtime.specs()],
        peers=peers,
        gateway=None if gateway is None else await gateway_models(gateway),
    )
