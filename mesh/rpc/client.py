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

    ``key`` is the mesh key (or a client key): with one, the client refuses
    a node that cannot prove it holds the same key (and an open node);
    without one, it refuses a node that demands a key, with a clear
    :class:`AuthError`. ``role`` is what the handshake claims: ``"client"``
    (infer, models, status, ping) or ``"node"`` (a mesh member, which must
    give its ``name``). ``seal`` (default: the config's) offers to seal the
    link; with a key, the node then seals every frame after the handshake.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        config: RpcConfig | None = None,
        key: bytes | None = None,
        methods: Methods | None = None,
        role: str = auth.CLIENT,
        name: str = "",
        seal: bool | None = None,
    ) -> None:
        if role not in auth.ROLES or (role == auth.NODE and not name):
            raise ValueError("role must be 'client', or 'node' with a name")
        self.host = host
        self.port = port
        self._config = config or RpcConfig()
        self._key = key
        self._methods = methods or Methods()
        self._role = role
        self._name = name
        self._seal = self._config.seal if seal is None else seal
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
        offer = auth.SEAL_SUITES if self._seal and self._key is not None else ()
        claims = auth.Claims(
            role=self._role,
            name=self._name,
            seal=offer,
            key_id=None if self._key is None else auth.mesh_id(self._key),
            version=2,
        )
        hello: dict[str, Any] = {"nonce": client_nonce, "role": claims.role, "seal": list(offer)}
        if claims.name:
            hello["name"] = claims.name
        if claims.key_id is not None:
            hello["key_id"] = claims.key_id
        first = await self.connection.call("hello", [hello], timeout=timeout)
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
        choice = first.get("seal", auth.SEAL_NONE)
        if choice != auth.SEAL_NONE and choice not in offer:
            raise ProtocolError(f"hello: {where} chose sealing {choice!r}, which we did not offer")
        binds = auth.transcript(claims, str(choice))
        auth.verify_server_proof(self._key, client_nonce, server_nonce, first.get("proof"), binds)
        proof = auth.client_proof(self._key, client_nonce, server_nonce, binds)
        session = auth.Session(
            role=claims.role,
            name=claims.name,
            seal=str(choice),
            key=self._key,
            client_nonce=client_nonce,
            server_nonce=server_nonce,
            transcript=binds,
        )
        second = await self.connection.finish_handshake(
            [{"proof": proof}], session, timeout=timeout
        )
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
