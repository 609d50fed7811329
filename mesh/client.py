"""The Python SDK: :class:`MeshClient` (asyncio) and :class:`Client` (blocking).

::

    async with MeshClient("127.0.0.1:7700") as client:
        outputs = await client.infer("digits-small", {"X": pixels})
        outputs["label"]          # a numpy array

    with Client("127.0.0.1:7700") as client:   # scripts and notebooks
        outputs = client.infer("digits-small", {"X": pixels})

Arrays go in and come out as numpy; errors are the classes of
:mod:`mesh.errors`, raised with the node's message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import secrets
import threading
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mesh.config import DEFAULT_RPC_PORT, RpcConfig
from mesh.core.addresses import parse_address
from mesh.core.codec import decode_tensors, encode_tensors
from mesh.errors import ConfigError, InvalidInput, ProtocolError
from mesh.rpc import RpcClient

__all__ = ["Client", "Inference", "MeshClient", "ModelInfo", "TensorInfo"]

T = TypeVar("T")


@dataclass(frozen=True)
class Inference:
    """A request's outputs, and where it ran: a node's name, or ``"gateway"``."""

    outputs: dict[str, NDArray[Any]]
    ran_on: str


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model: name, numpy dtype name, shape (-1 = any size)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A model a node serves, as ``models()`` reports it."""

    name: str
    version: str
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    description: str = ""
    accuracy: float | None = None
    compute_only: bool = False

    @classmethod
    def from_wire(cls, obj: object) -> ModelInfo:
        """Build from one entry of the ``models()`` reply."""
        if not isinstance(obj, dict):
            raise ProtocolError(f"models(): expected a map per model, got {type(obj).__name__}")
        try:
            return cls(
                name=str(obj["name"]),
                version=str(obj["version"]),
                sha256=str(obj["sha256"]),
                inputs=tuple(_tensor_info(t) for t in obj["inputs"]),
                outputs=tuple(_tensor_info(t) for t in obj["outputs"]),
                description=str(obj.get("description", "")),
                accuracy=obj.get("accuracy"),
                compute_only=bool(obj.get("compute_only", False)),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"models(): malformed model entry: {exc}") from None


def _tensor_info(obj: Any) -> TensorInfo:
    return TensorInfo(name=str(obj["name"]), dtype=str(obj["dtype"]), shape=tuple(obj["shape"]))


def _as_key(mesh_key: bytes | str | None) -> bytes | None:
    if mesh_key is None:
        return None
    key = mesh_key.encode() if isinstance(mesh_key, str) else mesh_key
    key = key.strip()
    if not key:
        raise ConfigError("mesh_key is empty")
    return key


class MeshClient:
    """An asyncio client of one edgemesh node.

    ``address`` is ``"host:port"`` (port 7700 when left out). ``mesh_key``
    is the mesh's shared key, needed when the node has one. ``timeout`` is
    the default seconds to wait for any one answer.
    """

    def __init__(
        self,
        address: str = f"127.0.0.1:{DEFAULT_RPC_PORT}",
        *,
        mesh_key: bytes | str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_message_bytes: int | None = None,
    ) -> None:
        try:
            host, port = parse_address(address, default_port=DEFAULT_RPC_PORT)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        defaults = RpcConfig()
        self._config = RpcConfig(
            max_message_bytes=max_message_bytes or defaults.max_message_bytes,
            call_timeout_s=timeout,
            connect_timeout_s=connect_timeout,
        )
        self.address = f"{host}:{port}"
        # Request ids: a random prefix per client and a counter, unique
        # across clients and cheap to make (uuid4 per call showed in profiles).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._rpc = RpcClient(host, port, config=self._config, key=_as_key(mesh_key))

    @property
    def node(self) -> dict[str, Any]:
        """What the node said of itself in the handshake (name, id, version, ...)."""
        return dict(self._rpc.hello)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect and authenticate; raises PeerUnavailable or AuthError."""
        await self._rpc.connect()

    async def aclose(self) -> None:
        """Close the connection; calls still waiting fail with PeerUnavailable."""
        await self._rpc.aclose()

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        *,
        deadline: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Run ``model`` on ``inputs`` (input name → array); outputs by name.

        ``deadline`` is how many seconds the node may take before giving up
        with DeadlineExceeded (a node that cannot make it, even with its
        gateway, refuses at once with Overloaded); ``timeout`` how long this
        client waits for the answer (the client's default when None).
        """
        reply = await self._infer(model, inputs, deadline, request_id, timeout, detail=False)
        return self._outputs(reply)

    async def infer_detailed(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        *,
        deadline: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Inference:
        """Like :meth:`infer`, and also say where the request ran."""
        reply = await self._infer(model, inputs, deadline, request_id, timeout, detail=True)
        if not isinstance(reply, dict) or not isinstance(reply.get("ran_on"), str):
            raise ProtocolError("the node's detailed infer reply lacks 'ran_on'")
        return Inference(outputs=self._outputs(reply.get("outputs")), ran_on=reply["ran_on"])

    async def _infer(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        deadline: float | None,
        request_id: str | None,
        timeout: float | None,
        *,
        detail: bool,
    ) -> Any:
        params: list[Any] = [model, _encode_inputs(inputs)]
        options: dict[str, Any] = {
            "request_id": request_id or f"{self._id_prefix}-{next(self._ids)}"
        }
        if deadline is not None:
            options["deadline_ms"] = deadline * 1000
        if detail:
            options["detail"] = True
        params.append(options)
        if timeout is None and deadline is not None:
            # Leave the node time to say it missed the deadline.
            timeout = max(deadline + 1.0, self._config.call_timeout_s)
        return await self._rpc.call("infer", params, timeout=timeout)

    @staticmethod
    def _outputs(reply: object) -> dict[str, NDArray[Any]]:
        try:
            return decode_tensors(reply, what="outputs")
        except InvalidInput as exc:
            raise ProtocolError(f"the node's infer reply is malformed: {exc.message}") from None

    async def models(self) -> list[ModelInfo]:
        """The models the node serves."""
        reply = await self._rpc.call("models", [])
        if not isinstance(reply, list):
            raise ProtocolError(f"models(): expected a list, got {type(reply).__name__}")
        return [ModelInfo.from_wire(entry) for entry in reply]

    async def status(self) -> dict[str, Any]:
        """The node's status map: identity, models, counters."""
        reply = await self._rpc.call("status", [])
        if not isinstance(reply, dict):
            raise ProtocolError(f"status(): expected a map, got {type(reply).__name__}")
        return reply

    async def ping(self) -> float:
        """Round-trip time to the node, in seconds."""
        start = time.perf_counter()
        await self._rpc.call("ping", [])
        return time.perf_counter() - start


def _encode_inputs(inputs: Mapping[str, ArrayLike]) -> dict[str, Any]:
    if not isinstance(inputs, Mapping):
        raise InvalidInput(
            f"inputs must be a mapping of input name to array, got {type(inputs).__name__}"
        )
    arrays = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise InvalidInput(f"input {name!r}: object arrays cannot be sent; use a numeric dtype")
        arrays[name] = array
    return encode_tensors(arrays)


class Client:
    """A blocking client for scripts and notebooks, with :class:`MeshClient`'s methods.

    It runs a private event loop on a background thread, so it works where
    an event loop is already running (Jupyter) as well as in plain scripts.
    """

    def __init__(
        self,
        address: str = f"127.0.0.1:{DEFAULT_RPC_PORT}",
        *,
        mesh_key: bytes | str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="edgemesh-client", daemon=True
        )
        self._thread.start()
        try:
            self._client = MeshClient(
                address, mesh_key=mesh_key, timeout=timeout, connect_timeout=connect_timeout
            )
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coroutine, self._loop
        )
        return future.result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def node(self) -> dict[str, Any]:
        """What the node said of itself in the handshake."""
        return self._client.node

    def infer(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        *,
        deadline: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, NDArray[Any]]:
        """See :meth:`MeshClient.infer`."""
        return self._run(
            self._client.infer(
                model, inputs, deadline=deadline, request_id=request_id, timeout=timeout
            )
        )

    def infer_detailed(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        *,
        deadline: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> Inference:
        """See :meth:`MeshClient.infer_detailed`."""
        return self._run(
            self._client.infer_detailed(
                model, inputs, deadline=deadline, request_id=request_id, timeout=timeout
            )
        )

    def models(self) -> list[ModelInfo]:
        """See :meth:`MeshClient.models`."""
        return self._run(self._client.models())

    def status(self) -> dict[str, Any]:
        """See :meth:`MeshClient.status`."""
        return self._run(self._client.status())

    def ping(self) -> float:
        """See :meth:`MeshClient.ping`."""
        return self._run(self._client.ping())

    def close(self) -> None:
        """Close the connection and stop the background loop. Idempotent."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.aclose())
        finally:
            self._stop_loop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
