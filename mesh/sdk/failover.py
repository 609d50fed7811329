"""The SDK's node in use, and failing over from it: :class:`Failover`.

:class:`~mesh.sdk.client.MeshClient` builds the calls (parameters, deadlines,
batches) and hands each to :meth:`Failover.call`, which sends it on the
link in use and, when that link is lost or its node is draining, re-sends
it to the least loaded node the call has not tried yet (the rules are in
the client's module docstring). Kept apart from the client so that the
state of the connection (the link in use, the draining links still being
answered on, the lock that serialises switching) has one owner, and the
client only the calls. The choices themselves are
:mod:`mesh.core.policy.node_choice`'s; :mod:`mesh.sdk.pool` does the dialling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mesh.config import RpcConfig
from mesh.core.policy.node_choice import NodeChoice, give_up, tried_text
from mesh.errors import Draining, PeerUnavailable, RpcTimeout
from mesh.sdk.pool import NodeLink, probe_all

__all__ = ["Failover"]

# The client's logger: failover messages read as the client's, as before the split.
log = logging.getLogger("mesh.sdk.client")


class Failover:
    """The link to the node in use among ``addresses``, and the switching to another.

    Nothing is dialled until :meth:`connect`. ``config`` and ``key`` are used
    for every dial; ``heartbeat`` is each link's (see :class:`NodeLink`).
    """

    def __init__(
        self,
        addresses: tuple[str, ...],
        *,
        config: RpcConfig,
        key: bytes | None,
        heartbeat: float | None,
    ) -> None:
        self._addresses = addresses
        self._config = config
        self._key = key
        self._heartbeat = heartbeat
        self._link: NodeLink | None = None
        # Links to draining nodes: no new calls go there, but the calls
        # they took are still answered there; closed once they are gone.
        self._retired: list[NodeLink] = []
        self._switching = asyncio.Lock()
        self._choice = NodeChoice(addresses)
        self._open = False

    @property
    def link(self) -> NodeLink | None:
        """The link in use now, or None (not connected, or between nodes)."""
        return self._link

    async def connect(self) -> None:
        """Connect to the least loaded live node (see :meth:`MeshClient.connect`)."""
        async with self._switching:
            self._open = True
            if self._link is not None and self._link.alive:
                return
            try:
                await self._switch({}, connecting=True)
            except BaseException:
                self._open = False
                raise

    async def aclose(self) -> None:
        """Close every link; calls still waiting fail with PeerUnavailable."""
        self._open = False
        link, self._link = self._link, None
        retired, self._retired = self._retired, []
        for old in [*retired, *([] if link is None else [link])]:
            await old.aclose()

    async def call(
        self, method: str, params: Callable[[float, int], list[Any]], timeout: float
    ) -> tuple[NodeLink, Any]:
        """Call ``method`` on the node in use, failing over while connections are lost.

        ``params(elapsed, attempt)`` builds the parameters just before each
        send. Returns the link that answered, and its answer.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        tried: dict[str, str] = {}
        sends = 0
        while True:
            link = self._link
            if link is None or not link.alive or link.address in tried:
                left = timeout - (loop.time() - started)
                try:
                    async with asyncio.timeout(left):
                        link = await self._relink(tried)
                except TimeoutError:
                    raise RpcTimeout(
                        f"{method}: no node could take it within {timeout:.3g} s{tried_text(tried)}"
                    ) from None
            elapsed = loop.time() - started
            try:
                return link, await link.call(
                    method, params(elapsed, sends), timeout=max(timeout - elapsed, 0.001)
                )
            except PeerUnavailable as exc:
                sends += 1
                tried[link.address] = exc.message
                self._choice.found_down(link.address, loop.time(), exc.message)
                if isinstance(exc, Draining):
                    self._retire(link)
                log.info("%s on %s lost (%s); failing over", method, link.address, exc.message)

    def _retire(self, link: NodeLink) -> None:
        """``link``'s node is draining: new calls go elsewhere; its open calls stay."""
        if self._link is link:
            self._link = None
            self._retired.append(link)

    async def _relink(self, tried: dict[str, str]) -> NodeLink:
        """A live link to a node ``tried`` does not name: the one in use, or a new one."""
        async with self._switching:
            if not self._open:
                raise PeerUnavailable(
                    "the client is not connected (closed, or never connected: "
                    "use `async with` or connect())"
                )
            link = self._link
            if link is not None and link.alive:
                if link.address not in tried:
                    return link
                # It came back, but this call was lost there once already.
                raise PeerUnavailable(f"no untried edgemesh node is connected{tried_text(tried)}")
            if link is not None:
                self._link = None
                await link.aclose()
            # Drained nodes have closed their side by now: let their links go.
            for old in [old for old in self._retired if not old.alive]:
                self._retired.remove(old)
                await old.aclose()
            return await self._switch(tried, connecting=False)

    async def _switch(self, tried: dict[str, str], *, connecting: bool) -> NodeLink:
        """Probe the nodes not in ``tried`` and make the least loaded live one current.

        Nodes found dead are added to ``tried`` with the reason. Called with
        the switching lock held.
        """
        loop = asyncio.get_running_loop()
        dial = self._choice.dial(tried, loop.time(), connecting=connecting)
        tried.update(dial.skipped)
        if not dial.addresses:
            raise PeerUnavailable(f"no edgemesh node left to try{tried_text(tried)}")
        probes = await probe_all(
            dial.addresses, config=self._config, key=self._key, heartbeat=self._heartbeat
        )
        links = [probe.link for probe in probes if probe.link is not None]
        if not self._open:  # closed while we were dialling
            for link in links:
                await link.aclose()
            raise PeerUnavailable("the client was closed")
        errors = [probe.error for probe in probes if probe.error is not None]
        for probe in probes:
            if probe.error is not None:
                tried[probe.address] = probe.error.message
                self._choice.found_down(probe.address, loop.time(), probe.error.message)
            elif probe.live:
                self._choice.found_live(probe.address)
        if not links:
            raise give_up(errors, tried, connecting=connecting, candidates=len(self._addresses))
        best, *rest = links
        for link in rest:
            await link.aclose()
        self._link = best
        if not connecting:
            log.warning("edgemesh client failed over to %s", best.address)
        return best
