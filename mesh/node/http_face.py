"""The node as the Open Inference Protocol server sees it."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from mesh.config import NodeConfig
from mesh.core.wire.catalog import IndexEntry
from mesh.core.wire.requests import InferRequest
from mesh.listening import Port, bind_ports, bind_tcp
from mesh.service import Answer, EdgemeshServer

if TYPE_CHECKING:  # the node imports this module; only types flow back
    from mesh.node.node import Node

__all__ = ["NodeHttpFace", "claim_ports", "http_status"]

log = logging.getLogger(__name__)


class NodeHttpFace(EdgemeshServer):
    """The node as the Open Inference Protocol sees it (an InferenceService).

    Kept apart because the node's ``ready`` is its readiness event.
    """

    def __init__(self, node: Node) -> None:
        self._node = node

    def ready(self) -> bool:
        """Ready once listening, and no longer once stopping or draining."""
        return self._node.ready.is_set() and not (self._node.stopping or self._node.draining)

    async def model_metadata(self, name: str) -> dict[str, Any]:
        return await self._node.model_metadata(name)

    async def infer(self, request: InferRequest) -> Answer:
        return await self._node.infer(request)

    async def repository_index(self) -> list[IndexEntry]:
        """Every model the node can route to (here, on a live peer, on the gateway).

        Each version here or on a peer is an entry (a version two nodes
        hold is listed once); the gateway's models come without a version.
        """
        view = await self._node.mesh_models()
        entries = [IndexEntry(m["name"], m.get("version")) for m in view["models"]]
        return list(dict.fromkeys(entries))


def claim_ports(config: NodeConfig) -> list[socket.socket]:
    """The RPC socket on ``config.host``, then, with ``--http-port``, the HTTP one.

    The HTTP socket goes where :meth:`NodeConfig.http_bind` says: the node's
    host, ``--http-host``, or 127.0.0.1 for a keyed node without an HTTP
    token, which the log then explains.
    """
    rpc = Port(config.port, "--port")
    if config.http.port is None:
        return bind_ports(config.host, [rpc])
    http = Port(config.http.port, "--http-port")
    host, why = config.http_bind()
    if why is not None:
        log.warning("%s", why)
    if host == config.host:
        return bind_ports(config.host, [rpc, http])
    [rpc_sock] = bind_ports(config.host, [rpc])
    try:
        http_sock = bind_tcp(host, http.port, flag=http.flag, host_flag="--http-host")
    except BaseException:
        rpc_sock.close()
        raise
    return [rpc_sock, http_sock]


def http_status(config: NodeConfig, port: int | None) -> dict[str, Any]:
    """The HTTP API in the node's ``status()``: where it listens and what it asks for."""
    if port is None:
        return {"port": None}
    return {
        "port": port,
        "host": config.http_bind()[0],
        "tls": config.http.tls_cert is not None,
        "token": config.http.token is not None,
    }
