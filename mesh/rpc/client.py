"""Opening a msgpack-RPC connection and running the mesh-key handshake from the client side."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Self

from mesh.config import RpcConfig
from mesh.core.wire import auth
from mesh.errors import AuthError, PeerUnavailable, ProtocolError
from mesh.rpc.connection import Methods, RpcConnection

__all__ = ["RpcClient"]


class RpcClient:
    """One outgoing connection with the handshake done; use as ``async with``.

    ``key`` is the mesh key: with one, the client refuses a node that cannot
    prove it holds the same key (and an open node); without one, it refuses
    a node that demands a key, with a clear :class:`AuthError`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        config: RpcConfig | None = None,
        key: bytes | None = None,
        methods: Methods | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._config = config or RpcConfig()
        self._key = key
        self._methods = methods or Methods()
        self._connection: RpcConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self.hello: dict[str, Any] = {}

    @property
    def connection(self) -> RpcConnection:
        """The live connection; PeerUnavailable before connect or after close."""
        if self._connection is None:
            raise PeerUnavailable(f"not connected to {self.host}:{self.port}")
        return self._connection

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (or was never opened)."""
        return self._connection is None or self._connection.closed

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Open the connection and run the mesh-key handshake."""
        where = f"{self.host}:{self.port}"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._config.connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: RpcConnection(config=self._config, methods=self._methods),
                    self.host,
                    self.port,
                )
        except TimeoutError:
            raise PeerUnavailable(f"cannot connect to {where}: timed out") from None
        except OSError as exc:
            raise PeerUnavailable(f"cannot connect to {where}: {exc.strerror or exc}") from exc
        self._connection = connection
        # Owned here and awaited in aclose(): the connection lives as long as the client.
        self._runner = asyncio.create_task(connection.run(), name=f"rpc {where}")
        try:
            await self._handshake()
        except BaseException:
            await self.aclose()
            raise

    async def _handshake(self) -> None:
        client_nonce = secrets.token_bytes(auth.NONCE_BYTES)
        timeout = self._config.connect_timeout_s
        first = await self.connection.call("hello", [{"nonce": client_nonce}], timeout=timeout)
        if not isinstance(first, dict):
            raise ProtocolError(f"hello answered {type(first).__name__}; expected a map")
        mode = first.get("auth")
        where = f"{self.host}:{self.port}"
        if mode == "none":
            if self._key is not None:
                raise AuthError(
                    f"{where} runs an open mesh (no key) but we hold a mesh key; refusing it"
                )
            self.hello = first
            return
        if mode != "hmac-sha256":
            raise ProtocolError(f"hello: unknown auth mode {mode!r} from {where}")
        if self._key is None:
            raise AuthError(f"{where} requires a mesh key; give one (--mesh-key-file or mesh_key=)")
        server_nonce = auth.check_nonce(first.get("nonce"))
        auth.verify_server_proof(self._key, client_nonce, server_nonce, first.get("proof"))
        proof = auth.client_proof(self._key, client_nonce, server_nonce)
        second = await self.connection.call("hello", [{"proof": proof}], timeout=timeout)
        if not isinstance(second, dict) or second.get("auth") != "ok":
            raise AuthError(f"{where} did not accept our mesh-key proof")
        self.hello = second

    async def call(self, method: str, params: list[Any], *, timeout: float | None = None) -> Any:
        """Call a method on the node; see :meth:`RpcConnection.call`."""
        return await self.connection.call(method, params, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connection and wait until it is gone."""
        if self._connection is not None:
            self._connection.close()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner
