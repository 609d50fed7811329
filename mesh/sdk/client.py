"""The Python SDK: :class:`MeshClient` (asyncio). :class:`mesh.Client` is its blocking twin.

::

    async with MeshClient(["10.0.0.5:7700", "10.0.0.6:7700"], mesh_key=key) as client:
        out = await client.infer("digits-small", {"X": pixels}, deadline=0.5)
        out["label"]             # a numpy array
        out.ran_on, out.node     # where it ran, and the node that answered

    async with await MeshClient.discover(mesh_key=key) as client:   # mDNS
        outs = await client.infer_many("digits-small", ({"X": row[None]} for row in pixels))

**Choosing a node.** Connecting dials every candidate at once, asks each
for its ``status`` and uses the least loaded live one: the smallest
estimated queueing wait (the node's own ``scheduler.wait_ms``) plus round
trip. One connection carries every call, pipelined. The choices are
:mod:`mesh.core.policy.node_choice`'s; :mod:`mesh.sdk.failover` carries them out.

**Failing over.** If the connection to that node is lost (closed, reset,
or silent for longer than the ``heartbeat``), every call that was waiting
on it is sent again, with the same request id and what is left of its
deadline and timeout, to the least loaded of the nodes it has not tried
yet. A node gets each call at most once, so a call ends after at most one
try per node, with :class:`PeerUnavailable` naming each node tried and
why. A node that answers :class:`~mesh.errors.Draining` (it is shutting
down, and did not serve the call) is failed over the same way; the client
stops sending it new calls at once, while the calls it already took are
still answered there. Any other answer from a node, error or not
(``InvalidInput``, ``Overloaded``, ``DeadlineExceeded``, ...), is final:
it is never retried.
So every call gets exactly one answer; a request may *run* twice when its
first node died after running it, as with any retry. Nodes that came back
are used again by later calls.

Arrays go in and come out as numpy; every error is a :class:`MeshError`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Self, overload

from numpy.typing import ArrayLike

from mesh.config import DEFAULT_RPC_PORT, RpcConfig
from mesh.core.policy.node_choice import deadline_left_s
from mesh.core.wire import auth
from mesh.errors import (
    ConfigError,
    DeadlineExceeded,
    MeshError,
    PeerUnavailable,
    ProtocolError,
)
from mesh.sdk.discovery import browse_nodes, node_address
from mesh.sdk.failover import Failover
from mesh.sdk.pool import normalize_addresses
from mesh.sdk.types import (
    Inference,
    MeshModels,
    ModelInfo,
    ModelLocation,
    TensorInfo,
    encode_inputs,
    inference_from_reply,
    mesh_models_from_reply,
)

__all__ = ["Inference", "MeshClient", "MeshModels", "ModelInfo", "ModelLocation", "TensorInfo"]

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_RPC_PORT}"


def _as_key(mesh_key: bytes | str | None) -> bytes | None:
    if mesh_key is None:
        return None
    key = mesh_key.encode() if isinstance(mesh_key, str) else mesh_key
    key = key.strip()
    if not key:
        raise ConfigError("mesh_key is empty")
    return key


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")


class MeshClient:
    """An asyncio client of an edgemesh mesh, through one node at a time.

    ``nodes`` is ``"host:port"`` (port 7700 when left out) or a list of
    them to choose from and fail over between. ``mesh_key`` is the mesh's
    shared key, needed when the nodes have one, or a node's client key
    (``--client-key-file``: the client is then a client only, as it always
    is; it never joins the mesh). With a key the link is sealed (AES-256-GCM
    or ChaCha20-Poly1305) unless ``seal`` is False. ``timeout`` is the default
    seconds to wait for any one answer, failovers included;
    ``connect_timeout`` bounds dialling one node; ``heartbeat`` is the
    seconds between pings to the node in use, and how long one may go
    unanswered before that node is taken for dead (None: rely on the
    operating system to report a lost connection). Nothing is dialled
    until :meth:`connect` (or ``async with``).
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
        for name, value in (
            ("timeout", timeout),
            ("connect_timeout", connect_timeout),
            ("heartbeat", heartbeat),
        ):
            _positive(name, value)
        self._addresses = normalize_addresses(nodes)
        self._config = RpcConfig(
            max_message_bytes=max_message_bytes or RpcConfig().max_message_bytes,
            call_timeout_s=timeout,
            connect_timeout_s=connect_timeout,
            seal=seal,
        )
        # Request ids: a random prefix per client and a counter, unique
        # across clients and cheap to make (uuid4 per call showed in profiles).
        self._id_prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._failover = Failover(
            self._addresses, config=self._config, key=_as_key(mesh_key), heartbeat=heartbeat
        )

    @classmethod
    async def discover(
        cls,
        *,
        mesh_key: bytes | str | None = None,
        interfaces: Sequence[str] | None = None,
        wait_s: float = 1.5,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        heartbeat: float | None = 3.0,
        max_message_bytes: int | None = None,
    ) -> MeshClient:
        """A client over the nodes of our mesh that answer mDNS within ``wait_s`` seconds.

        Only nodes whose advertised mesh id matches ``mesh_key`` (open nodes
        when it is None) are kept. ``interfaces`` lists the IP addresses to
        browse on; None means every interface. The client is returned *not
        yet connected*, like one made directly: use ``async with`` or
        :meth:`connect`. Raises PeerUnavailable when no node answered.
        """
        key = _as_key(mesh_key)
        mesh_id = auth.mesh_id(key)
        adverts = await browse_nodes(mesh_id=mesh_id, interfaces=interfaces, wait_s=wait_s)
        if not adverts:
            where = ", ".join(interfaces) if interfaces is not None else "all interfaces"
            raise PeerUnavailable(
                f"no edgemesh node of mesh {mesh_id} answered mDNS on {where} within {wait_s:.3g} s"
            )
        return cls(
            [node_address(advert) for advert in adverts],
            mesh_key=key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            heartbeat=heartbeat,
            max_message_bytes=max_message_bytes,
        )

    # --- where we are connected --------------------------------------------------------

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every candidate node, ``"host:port"``, in the order given."""
        return self._addresses

    @property
    def address(self) -> str:
        """The node in use now (before connecting: the first candidate)."""
        link = self._failover.link
        return self._addresses[0] if link is None else link.address

    @property
    def node(self) -> dict[str, Any]:
        """What the node in use said of itself in the handshake (name, id, version, ...)."""
        link = self._failover.link
        return {} if link is None else dict(link.hello)

    # --- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect to the least loaded live node.

        Raises AuthError if the nodes refused our key (or lack of one), else
        PeerUnavailable naming each node and why it could not be used. With
        a single candidate its own error is raised as it came.
        """
        await self._failover.connect()

    async def aclose(self) -> None:
        """Close the connection; calls still waiting fail with PeerUnavailable."""
        await self._failover.aclose()

    # --- calls -------------------------------------------------------------------------------

    async def infer(
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
        """Run ``model`` on ``inputs`` (input name → array); outputs by name, and where it ran.

        ``deadline`` is how many seconds the mesh may take before giving up
        with DeadlineExceeded (a mesh that cannot make it, even with its
        gateway, refuses at once with Overloaded). ``timeout`` is how long
        this client waits for the answer, failovers included (default: the
        client's timeout, or the deadline plus a second if that is longer).
        ``request_id`` names the request (default: a fresh unique id); a
        failover re-sends it under the same id. For a model with an escalation
        rule, ``escalate=False`` keeps the edge answer and ``escalate_threshold``
        replaces the rule's threshold for this request. ``version`` runs that
        version of the model (its label, e.g. ``"2"``) and no other; by
        default the mesh's newest runs.
        """
        encoded = encode_inputs(inputs)
        choices = {
            "escalate": escalate,
            "escalate_threshold": escalate_threshold,
            "version": version,
        }
        rid = request_id if request_id is not None else f"{self._id_prefix}-{next(self._ids)}"

        def params(elapsed: float, attempt: int) -> list[Any]:
            options: dict[str, Any] = {"request_id": rid, "detail": True}
            options.update((k, v) for k, v in choices.items() if v is not None)
            if deadline is not None:
                left = deadline_left_s(deadline, elapsed, attempt)
                if left is None:
                    raise DeadlineExceeded(
                        f"request {rid}: its deadline of {deadline:.3g} s passed while "
                        "failing over to another node"
                    )
                options["deadline_ms"] = left * 1000
            return [model, encoded, options]

        if timeout is None:
            timeout = self._config.call_timeout_s
            if deadline is not None:
                # Leave the node time to say it missed the deadline.
                timeout = max(deadline + 1.0, timeout)
        link, reply = await self._failover.call("infer", params, timeout)
        return inference_from_reply(reply, node=link.address, request_id=rid)

    @overload
    async def infer_many(
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
    async def infer_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, ArrayLike]],
        *,
        deadline: float | None = ...,
        timeout: float | None = ...,
        concurrency: int = ...,
        return_exceptions: bool,
    ) -> list[Inference] | list[Inference | MeshError]: ...

    async def infer_many(
        self,
        model: str,
        batch: Iterable[Mapping[str, ArrayLike]],
        *,
        deadline: float | None = None,
        timeout: float | None = None,
        concurrency: int = 64,
        return_exceptions: bool = False,
    ) -> list[Inference] | list[Inference | MeshError]:
        """:meth:`infer` for each inputs of ``batch``, pipelined; answers in ``batch``'s order.

        At most ``concurrency`` requests are in flight at once, each with its
        own request id, ``deadline`` and ``timeout`` (counted from when it is
        sent), and each fails over on its own. The first error is raised
        (and the requests still in flight abandoned) unless
        ``return_exceptions``, which puts each error in its request's place.
        ``batch`` is read lazily, so it may be a generator.
        """
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        items = enumerate(batch)
        results: dict[int, Inference | MeshError] = {}

        async def worker() -> None:
            # Workers share one iterator: each item is taken exactly once.
            for index, inputs in items:
                try:
                    results[index] = await self.infer(
                        model, inputs, deadline=deadline, timeout=timeout
                    )
                except MeshError as exc:
                    if not return_exceptions:
                        raise
                    results[index] = exc

        workers = concurrency
        if isinstance(batch, Sequence):
            workers = max(1, min(concurrency, len(batch)))
        try:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(workers):
                    tasks.create_task(worker())
        except BaseExceptionGroup as group:
            # Raise the error itself, as infer() would, not a group of one.
            first = group.exceptions[0]
            if isinstance(first, Exception) and (
                len(group.exceptions) == 1
                or all(isinstance(e, MeshError) for e in group.exceptions)
            ):
                raise first from None
            raise
        return [results[index] for index in range(len(results))]

    async def models(self) -> list[ModelInfo]:
        """The models the node in use serves."""
        _, reply = await self._failover.call("models", _no_params, self._config.call_timeout_s)
        if not isinstance(reply, list):
            raise ProtocolError(f"models(): expected a list, got {type(reply).__name__}")
        return [ModelInfo.from_wire(entry) for entry in reply]

    async def mesh_models(self) -> MeshModels:
        """Every model the node in use can route to, and where each is: on that
        node (``"here"``), on a live peer (``"peer"``) or on its gateway."""

        def params(elapsed: float, attempt: int) -> list[Any]:
            return [{"scope": "mesh"}]

        _, reply = await self._failover.call("models", params, self._config.call_timeout_s)
        return mesh_models_from_reply(reply)

    async def status(self) -> dict[str, Any]:
        """The status map of the node in use: identity, models, peers, counters, load."""
        _, reply = await self._failover.call("status", _no_params, self._config.call_timeout_s)
        if not isinstance(reply, dict):
            raise ProtocolError(f"status(): expected a map, got {type(reply).__name__}")
        return reply

    async def ping(self) -> float:
        """Round-trip time to the node in use, in seconds."""
        sent = 0.0

        def params(elapsed: float, attempt: int) -> list[Any]:
            nonlocal sent
            sent = time.perf_counter()
            return []

        await self._failover.call("ping", params, self._config.call_timeout_s)
        return time.perf_counter() - sent


def _no_params(elapsed: float, attempt: int) -> list[Any]:
    return []
