"""msgpack-RPC over TCP: the asyncio edge around :mod:`mesh.core.wire.framing`.

* :class:`RpcConnection`: one connection, symmetric (call, answer, notify).
* :class:`RpcServer`: accepts connections; enforces the mesh-key handshake.
* :class:`RpcClient`: opens a connection and runs the handshake.
"""

from mesh.rpc.client import RpcClient
from mesh.rpc.connection import ERROR_NOTICE, Methods, RpcConnection
from mesh.rpc.server import RpcServer

__all__ = ["ERROR_NOTICE", "Methods", "RpcClient", "RpcConnection", "RpcServer"]
