"""The blocking SDK, :class:`Client`: :class:`~mesh.sdk.client.MeshClient` without ``await``.

::

    with Client(["10.0.0.5:7700", "10.0.0.6:7700"], mesh_key=key) as client:
        out = client.infer("digits-small", {"X": pixels})

    with Client.discover(mesh_key=key) as client:   # mDNS
        print(client.status()["name"])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, Self, TypeVar, overload

from numpy.typing import ArrayLike

from mesh.errors import MeshError, PeerUnavailable
from mesh.sdk.client import DEFAULT_ADDRESS, Inference, MeshClient, MeshModels, ModelInfo

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A blocking client for scripts and notebooks, with :class:`MeshClient`'s methods.

    The constructor takes :class:`MeshClient`'s arguments and connects at
    once (to the least loaded live node, failing over as MeshClient does).
    It runs a private event loop on a background thread, so it works where
    an event loop is already running (Jupyter) as well as in plain scripts.
    Close it with :meth:`close` or a ``with`` block.
    """

    def __init__(
        self,
        nodes: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        mesh_key: bytes | str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        heartbeat: float | None = 3.0,
        max_message_bytes: int | None = None,
        seal: bool = True,
    ) -> None:
        async def make() -> MeshClient:
            return MeshClient(
                nodes,
                mesh_key=mesh_key,
                timeout=timeout,
                connect_timeout=connect_timeout,
                heartbeat=heartbeat,
                max_message_bytes=max_message_bytes,
                seal=seal,
            )

        self._start(make)

    @classmethod
    def discover(
        cls,
        *,
        mesh_key: bytes | str | None = None,
        interfaces: Sequence[str] | None = None,
        wait_s: float = 1.5,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        heartbeat: float | None = 3.0,
        max_message_bytes: int | None = None,
    ) -> Client:
        """See :meth:`MeshClient.discover`; the client returned is connected."""

        def make() -> Awaitable[MeshClient]:
            return MeshClient.discover(
                mesh_key=mesh_key,
                interfaces=interfaces,
                wait_s=wait_s,
                timeout=timeout,
                connect_timeout=connect_timeout,
                heartbeat=heartbeat,
                max_message_bytes=max_message_bytes,
            )

        client = cls.__new__(cls)
        client._start(make)
        return client

    def _start(self, make: Callable[[], Awaitable[MeshClient]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="edgemesh-client", daemon=True
        )
        self._thread.start()
        try:
            # Made on the loop that will run it.
            self._client = self._run(_awaited(make()))
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coroutine.close()
            raise PeerUnavailable("the client is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coroutine, self._loop
        )
        try:
            return future.result()
        except BaseException:
            # Ctrl-C while waiting: stop the call too, not just our wait for it.
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def addresses(self) -> tuple[str, ...]:
        """See :attr:`MeshClient.addresses`."""
        return self._client.addresses

    @property
    def address(self) -> str:
        """See :attr:`MeshClient.address`."""
        return self._client.address

    @property
    def node(self) -> dict[str, Any]:
        """See :attr:`MeshClient.node`."""
        return self._client.node

    def infer(
        self,
        model: str,
        inputs: Mapping[str, ArrayLike],
        *,
        deadline: float | None = None,
        request_id: str | None = None,
        timeout: float | None = None,
        escalate: bool | None = None,
        escalate_threshold: float | None = None,
        version: str | None = None,
    ) -> Inference:
        """See :meth:`MeshClient.infer`."""
        return self._run(
            self._client.infer(
                model,
                inputs,
                deadline=deadline,
                request_id=request_id,
                timeout=timeout,
                escalate=escalate,
                escalate_threshold=escalate_threshold,
                version=version,
            )
        )

    @overload
    def infer_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, ArrayLike]],
        *,
        deadline: float | None = ...,
        timeout: float | None = ...,
        concurrency: int = ...,
        return_exceptions: Literal[False] = ...,
    ) -> list[Inference]: ...

    @overload
    def infer_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, ArrayLike]],
        *,
        deadline: float | None = ...,
        timeout: float | None = ...,
        concurrency: int = ...,
        return_exceptions: bool,
    ) -> list[Inference] | list[Inference | MeshError]: ...

    def infer_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, ArrayLike]],
        *,
        deadline: float | None = None,
        timeout: float | None = None,
        concurrency: int = 64,
        return_exceptions: bool = False,
    ) -> list[Inference] | list[Inference | MeshError]:
        """See :meth:`MeshClient.infer_many`; ``batch`` is read on the client's thread."""
        return self._run(
            self._client.infer_many(
                model,
                batch,
                deadline=deadline,
                timeout=timeout,
                concurrency=concurrency,
                return_exceptions=return_exceptions,
            )
        )

    def models(self) -> list[ModelInfo]:
        """See :meth:`MeshClient.models`."""
        return self._run(self._client.models())

    def mesh_models(self) -> MeshModels:
        """See :meth:`MeshClient.mesh_models`."""
        return self._run(self._client.mesh_models())

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


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
