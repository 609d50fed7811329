"""The node as msgpack-RPC sees it: its method table and each method's parameters.

The methods a client calls (``infer``, ``models``, ``status``, ``ping``,
``drain``, ``reload``) and the messages between peers (``steal`` and the ``gossip``,
``result``, ``handoff``, ``cancel``, ``nudge``, ``giveback`` and ``leaving``
notifications; only a caller whose handshake made it a node may use these,
see :data:`PEER_METHODS`), each handed to the part of the node that acts on it. Kept
apart from :class:`~mesh.node.node.Node` as :mod:`mesh.node.http_face` is:
the node runs things, the faces speak a protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mesh.core.membership.leaving import LEAVING
from mesh.core.wire.catalog import parse_models_params
from mesh.core.wire.handover import CANCEL, GIVE_BACK, HANDOFF, NUDGE, RESULT, STEAL
from mesh.core.wire.requests import parse_infer
from mesh.core.wire.tensors import encode_tensors
from mesh.errors import BadRequest, Forbidden, MeshError
from mesh.node.membership import GOSSIP
from mesh.node.model_transfer import TRANSFER_PEER_METHODS, transfer_methods
from mesh.rpc import Methods, RpcConnection

if TYPE_CHECKING:  # the node imports this module; only types flow back
    from mesh.node.node import Node

__all__ = ["PEER_METHODS", "NodeRpcFace"]

# What only a mesh node may call or send (the handshake's role, see
# mesh.core.wire.auth); a client gets Forbidden. A new peer method joins here.
PEER_METHODS = frozenset({STEAL, GOSSIP, RESULT, HANDOFF, CANCEL, NUDGE, GIVE_BACK, LEAVING})


class NodeRpcFace:
    """Builds the :class:`~mesh.rpc.Methods` a node serves."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def methods(self) -> Methods:
        """The node's method table: inline, concurrent and notifications."""
        node = self._node
        transfer_inline, transfer_concurrent = transfer_methods(node)
        return Methods(
            inline={
                "ping": self._ping,
                "status": self._status,
                "drain": self._drain,
                STEAL: lambda c, p: node.work.on_steal(c, p),
                **transfer_inline,
            },
            concurrent={
                "infer": self._infer,
                "models": self._models,
                "reload": self._reload,
                **transfer_concurrent,
            },
            notifications={
                GOSSIP: self._on_gossip,
                RESULT: lambda c, p: node.work.on_result(c, p),
                HANDOFF: lambda c, p: node.work.on_handoff(c, p),
                CANCEL: lambda c, p: node.work.on_cancel(c, p),
                NUDGE: lambda c, p: node.work.on_nudge(c, p),
                GIVE_BACK: lambda c, p: node.work.on_giveback(c, p),
                LEAVING: self._on_leaving,
            },
            peer_only=PEER_METHODS | TRANSFER_PEER_METHODS,
        )

    def _on_gossip(self, connection: RpcConnection, params: list[Any]) -> None:
        membership = self._node.membership
        if membership is not None:
            membership.on_gossip(connection, params)

    def _on_leaving(self, connection: RpcConnection, params: list[Any]) -> None:
        membership = self._node.membership
        if membership is not None:
            membership.on_leaving(connection, params)

    def _drain(self, connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
        # With a mesh key only a caller that passed the handshake gets here
        # (the connection refuses any call before it), as for every method;
        # a client key may use the mesh, not take a node out of it.
        if connection.by_client_key:
            raise Forbidden("drain needs the mesh key; a client key cannot drain a node")
        _no_params("drain", params)
        return self._node.drain_info()

    def _ping(self, _: RpcConnection, params: list[Any]) -> str:
        _no_params("ping", params)
        return "pong"

    async def _models(self, _: RpcConnection, params: list[Any]) -> Any:
        # No params: the local list, as always; {"scope": "mesh"}: see mesh.core.wire.catalog.
        if parse_models_params(params) == "local":
            return self._node.local_models()
        return await self._node.mesh_models()

    async def _reload(self, connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
        # Rescan the model directories now (as SIGHUP does) and say what changed.
        # Like drain, an operator's act: the mesh key's, not a client key's.
        if connection.by_client_key:
            raise Forbidden("reload needs the mesh key; a client key cannot reload a node")
        _no_params("reload", params)
        report = await self._node.model_store.reload()
        return report.to_wire()

    def _status(self, _: RpcConnection, params: list[Any]) -> dict[str, Any]:
        _no_params("status", params)
        return self._node.status()

    async def _infer(self, _: RpcConnection, params: list[Any]) -> dict[str, Any]:
        try:
            request = parse_infer(params)
        except MeshError as exc:
            self._node.refused(exc)
            raise
        answer = await self._node.infer(request)
        outputs = encode_tensors(answer.outputs)
        if request.detail:
            detail = {"outputs": outputs, "ran_on": answer.ran_on}
            if answer.escalation is not None:
                detail["escalation"] = dict(answer.escalation)
            return detail
        return outputs


def _no_params(method: str, params: list[Any]) -> None:
    if params:
        raise BadRequest(f"{method} takes no parameters, got {len(params)}")
