"""A node's drain, carried out: wait for the scheduler's drain to finish, then leave.

The rules (what happens to each job, when the drain is done) are pure, in
:mod:`mesh.core.scheduling.draining`; :class:`~mesh.node.node.Node` refuses
new requests itself. This module does the waiting and the goodbyes:

1. put the scheduler in drain mode (:meth:`WorkSharing.drain`);
2. wait until it owes, holds and runs nothing and every answer is written,
   for at most the drain timeout; past it, answer what is left with
   Draining (:meth:`WorkSharing.abandon`) and give those answers a moment
   to be written;
3. tell every peer we are ``leaving`` (over our own links, each flushed
   and then closed), and close the accepted connections after what they
   have queued is written.

The node then cancels the rest, and its mDNS task sends its goodbye.
A :meth:`Node.stop` at any point (a second signal) cuts this short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mesh.core.membership.leaving import LEAVING, Leaving
from mesh.errors import MeshError
from mesh.node.membership import MeshMembership
from mesh.node.work_sharing import WorkSharing
from mesh.rpc import RpcServer

__all__ = ["drain_and_leave"]

log = logging.getLogger(__name__)

# How often a draining node checks whether it is done.
_POLL_S = 0.01
# Once the drain is over: how long the last answers get to be written
# before the connections are closed anyway.
_LAST_WORDS_S = 1.0


async def drain_and_leave(
    *,
    name: str,
    timeout_s: float,
    work: WorkSharing,
    server: RpcServer,
    requests_in_flight: Callable[[], int],
    stopping: Callable[[], bool],
    membership: MeshMembership | None,
    leaving: Leaving,
) -> None:
    """Drain ``work`` within ``timeout_s``, then say goodbye; see the module's docstring.

    ``requests_in_flight`` counts the node's requests not yet answered (RPC
    and HTTP); ``stopping`` says whether a hard stop was asked for.
    """

    def settled() -> bool:
        return work.scheduler.drained() and requests_in_flight() == 0 and server.in_flight == 0

    log.info(
        "node %s draining: %d requests to answer, at most %g s",
        name,
        work.scheduler.owned(),
        timeout_s,
    )
    work.drain(timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            await _until(settled, stopping)
    except TimeoutError:
        log.warning(
            "node %s: drain timeout of %g s passed; answering %d requests with Draining",
            name,
            timeout_s,
            work.scheduler.owned(),
        )
        work.abandon()
        # Those answers still have to be written.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_LAST_WORDS_S):
                await _until(settled, stopping)
    if stopping():
        return  # a second signal: now, not later
    if membership is not None:
        _say_leaving(membership, leaving)
    await server.close_gracefully(_LAST_WORDS_S)
    log.info("node %s drained", name)


async def _until(done: Callable[[], bool], stopping: Callable[[], bool]) -> None:
    # Polled: "done" spans three owners (the scheduler, the node's requests,
    # the RPC connections' calls) that share no event, and a 10 ms poll for
    # at most one drain timeout costs nothing.
    while not (stopping() or done()):  # noqa: ASYNC110
        await asyncio.sleep(_POLL_S)


def _say_leaving(membership: MeshMembership, leaving: Leaving) -> None:
    """Tell every peer we are leaving, so that none waits to suspect us."""
    notice = leaving.to_wire()
    for member in membership.view.members():
        connection = membership.link(member.name)
        if connection is None:
            continue
        with contextlib.suppress(MeshError):
            connection.notify(LEAVING, notice)
            # Flushed, then closed: an abort could lose the goodbye.
            connection.close()
