"""The SDK's connections to nodes: probe the candidates, rank them by load, watch the one in use.

:class:`MeshClient <mesh.sdk.client.MeshClient>` decides which node to use and
when to fail over; this module does the I/O for it:

* :func:`probe_all` dials every candidate at once, runs the handshake and
  asks each for its ``status``, and ranks them as
  :func:`mesh.core.policy.node_choice.rank` says: live ones first, least
  estimated queueing wait plus round trip first.
* :class:`NodeLink` is one authenticated connection with a heartbeat: a
  node that stops answering pings is taken for dead and its connection
  dropped, so the calls waiting on it fail over instead of hanging until
  their timeout (a powered-off device sends no FIN).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mesh.config import DEFAULT_RPC_PORT, RpcConfig
from mesh.core.policy.node_choice import rank, score_s
from mesh.core.wire.addresses import format_address, parse_address
from mesh.errors import ConfigError, MeshError, PeerUnavailable, RpcTimeout, TransportError
from mesh.rpc import RpcClient

__all__ = ["NodeLink", "Probe", "normalize_addresses", "probe_all"]

log = logging.getLogger(__name__)

# Once one candidate is live, how long the slower ones still get to answer.
# Without it one blackholed address would hold every connect (and failover)
# up for the whole connect timeout while a good node sits ready.
PROBE_GRACE_S = 0.25


def normalize_addresses(nodes: str | Sequence[str]) -> tuple[str, ...]:
    """``"host:port"`` (or a list of them) checked, with the default port filled in.

    Duplicates are dropped, order is kept. Raises ConfigError for a malformed
    address or an empty list.
    """
    items = [nodes] if isinstance(nodes, str) else list(nodes)
    addresses: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"a node address must be 'host:port' text, got {item!r}")
        try:
            host, port = parse_address(item, default_port=DEFAULT_RPC_PORT)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        address = format_address(host, port)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ConfigError("no node address given; pass 'host:port' or a list of them")
    return tuple(addresses)


class NodeLink:
    """One authenticated connection to a node, watched by a heartbeat.

    ``heartbeat`` is the seconds between pings and also how long a ping may
    go unanswered before the node is taken for dead; None turns it off (a
    lost connection is then noticed only when the operating system says so).
    """

    def __init__(self, address: str, rpc: RpcClient, *, heartbeat: float | None) -> None:
        self.address = address
        self._rpc = rpc
        self._watch: asyncio.Task[None] | None = None
        if heartbeat is not None:
            # Owned here and awaited in aclose(): it lives as long as the link.
            self._watch = asyncio.create_task(
                self._heartbeat(heartbeat), name=f"edgemesh heartbeat {address}"
            )

    @property
    def hello(self) -> dict[str, Any]:
        """What the node said of itself in the handshake."""
        return self._rpc.hello

    @property
    def alive(self) -> bool:
        """Whether the connection is still open."""
        return not self._rpc.closed

    async def call(self, method: str, params: list[Any], *, timeout: float) -> Any:
        """Call ``method`` on the node; raises what :meth:`RpcConnection.call` raises."""
        return await self._rpc.call(method, params, timeout=timeout)

    def drop(self, reason: PeerUnavailable) -> None:
        """Drop the connection now; the calls waiting on it fail with ``reason``."""
        if self._rpc.closed:
            return
        connection = self._rpc.connection
        # close() records why; abort() then drops it without waiting to flush
        # to a peer that may never read again.
        connection.close(reason)
        connection.abort()

    async def aclose(self) -> None:
        """Stop the heartbeat and close the connection; waits until both are gone."""
        # Closed at once, before anything is awaited, so that even a
        # cancelled aclose() leaves no connection open.
        if not self._rpc.closed:
            self._rpc.connection.close()
        if self._watch is not None:
            watch, self._watch = self._watch, None
            watch.cancel()
            # wait() rather than await: the task ends cancelled, which is not our error.
            await asyncio.wait([watch])
        await self._rpc.aclose()

    async def _heartbeat(self, every: float) -> None:
        while not self._rpc.closed:
            await asyncio.sleep(every)
            try:
                await self._rpc.call("ping", [], timeout=every)
            except RpcTimeout:
                log.warning(
                    "edgemesh node %s did not answer a ping within %.3g s; failing over",
                    self.address,
                    every,
                )
                self.drop(
                    PeerUnavailable(
                        f"{self.address} did not answer a ping within {every:.3g} s; taken for dead"
                    )
                )
                return
            except MeshError:
                # Lost already (the waiting calls know), or a server without
                # ping: either way there is nothing left to watch.
                return


@dataclass(frozen=True)
class Probe:
    """What probing one candidate found: a live link with its score, or why not."""

    address: str
    link: NodeLink | None = None
    score: float = math.inf
    """Estimated wait plus round trip, in seconds; inf when the node did not say."""
    error: MeshError | None = None
    """Why the node cannot be used; None for a live node or one that was not waited for."""

    @property
    def live(self) -> bool:
        """Whether the probe left a usable link."""
        return self.link is not None


async def probe_all(
    addresses: Sequence[str],
    *,
    config: RpcConfig,
    key: bytes | None,
    heartbeat: float | None,
) -> list[Probe]:
    """Probe every address at once; live ones first, least loaded first.

    Each probe is bounded by ``config.connect_timeout_s``. Once one node is
    live, the others get :data:`PROBE_GRACE_S` more to answer; those that do
    not are returned with neither link nor error (not known to be dead). The
    caller owns the returned links and must close those it does not keep.
    """
    loop = asyncio.get_running_loop()
    tasks: dict[asyncio.Task[Probe], str] = {}
    try:
        async with asyncio.TaskGroup() as group:
            for address in addresses:
                tasks[group.create_task(_probe(address, config, key, heartbeat))] = address
            pending = set(tasks)
            give_up_at: float | None = None
            while pending:
                wait_s = None if give_up_at is None else max(0.0, give_up_at - loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break
                if give_up_at is None and any(task.result().link for task in done):
                    give_up_at = loop.time() + PROBE_GRACE_S
            for task in pending:
                task.cancel()
    except BaseException:
        # Cancelled ourselves: nobody will take the links already made.
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                link = task.result().link
                if link is not None:
                    await link.aclose()
        raise
    found = [
        Probe(address) if task.cancelled() else task.result() for task, address in tasks.items()
    ]
    return rank(found)


async def _probe(
    address: str, config: RpcConfig, key: bytes | None, heartbeat: float | None
) -> Probe:
    host, port = parse_address(address)
    rpc = RpcClient(host, port, config=config, key=key)
    try:
        async with asyncio.timeout(config.connect_timeout_s):
            await rpc.connect()
            started = time.perf_counter()
            status = await rpc.call("status", [], timeout=config.connect_timeout_s)
            rtt = time.perf_counter() - started
    except TimeoutError:
        await rpc.aclose()
        return Probe(
            address,
            error=PeerUnavailable(
                f"no answer from {address} within {config.connect_timeout_s:.3g} s"
            ),
        )
    except TransportError as exc:
        await rpc.aclose()
        return Probe(address, error=exc)
    except MeshError as exc:
        if rpc.closed:  # refused in the handshake (AuthError, ...)
            await rpc.aclose()
            return Probe(address, error=exc)
        # Connected, but status() failed: usable, with its load unknown.
        return Probe(address, link=NodeLink(address, rpc, heartbeat=heartbeat))
    except BaseException:
        # Cancelled (another node answered first and the grace ran out).
        await rpc.aclose()
        raise
    return Probe(
        address, link=NodeLink(address, rpc, heartbeat=heartbeat), score=score_s(status, rtt)
    )
