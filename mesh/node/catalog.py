"""Where the models a node can route to are: here, on live peers, on the gateway.

The edge half of ``models([{"scope": "mesh"}])``: it gathers what the node
knows (its runtime, gossip, one short question to the gateway) and hands it
to :func:`mesh.core.wire.catalog.mesh_view`, which shapes the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mesh.core.models.signatures import ModelSpec
from mesh.core.wire.catalog import GatewayModels, mesh_view
from mesh.core.wire.oip import model_metadata
from mesh.errors import MeshError, ModelNotFound
from mesh.gateway.client import GatewayClient
from mesh.node.membership import MeshMembership
from mesh.rpc import RpcConnection
from mesh.runtime.runtime import Runtime

__all__ = ["gateway_models", "metadata_in_mesh", "models_in_mesh"]

log = logging.getLogger(__name__)

# A peer asked for a model's signature (for HTTP metadata) gets this long.
_METADATA_TIMEOUT_S = 5.0


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


async def metadata_in_mesh(
    name: str,
    runtime: Runtime,
    *,
    holders: Iterable[str],
    link: Callable[[str], RpcConnection | None],
    gateway: GatewayClient | None,
    versions: Sequence[str] = (),
) -> dict[str, Any]:
    """V2 metadata of ``name``: ours, else a holder's (asked over RPC), else the gateway's.

    ``versions``: the versions of ``name`` the mesh serves (here and on live
    peers), listed as the metadata's ``versions`` when the mesh has it.
    """
    if name in runtime:
        return _with_versions(model_metadata(runtime.spec(name)), versions)
    for peer in holders:
        connection = link(peer)
        if connection is None:
            continue
        try:
            specs = await connection.call("models", [], timeout=_METADATA_TIMEOUT_S)
            for spec in map(ModelSpec.from_wire, specs):
                if spec.name == name:
                    return _with_versions(model_metadata(spec), versions)
        except MeshError as exc:
            log.debug("no metadata of %s from %s: %s", name, peer, exc.message)
    if gateway is not None:
        return await gateway.model_metadata(name)
    raise ModelNotFound(f"no node in the mesh serves model '{name}'")


def _with_versions(metadata: dict[str, Any], versions: Sequence[str]) -> dict[str, Any]:
    if versions:
        metadata["versions"] = list(versions)
    return metadata
