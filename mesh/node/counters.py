"""A node's request counters, and the identities they keep.

Every request that reaches :meth:`Node.infer` (RPC or HTTP) counts once in
``requests`` and ends in exactly one of ``served``, ``failed`` (by error
code in ``errors``) or ``client_gone`` (its call was cancelled: the client
disconnected, or the node stopped, before an answer); while it is open it
counts in ``in_flight``. So at every moment::

    requests == served + failed + client_gone + in_flight

``client_gone`` is the node's count of requests; the scheduler's own
``cancelled`` (in :data:`WORK_COUNTERS`) counts jobs it dropped on a cancel,
its own and those an owner withdrew from it, and is a different figure.

Routing's counters (:data:`ROUTING_COUNTERS`, kept by
:mod:`mesh.node.routing`) keep their own identity::

    offloaded == served_by_gateway + offload_failed + offload_cancelled + offload_in_flight
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from mesh.errors import InternalError, MeshError

__all__ = ["ROUTING_COUNTERS", "WORK_COUNTERS", "RequestCounters"]

# The scheduler's counters that status() always shows, zero or not.
WORK_COUNTERS = (
    "served_local",
    "served_remote",
    "stolen_in",
    "stolen_out",
    "requeued",
    "reclaimed",
    "expired",
    "cancelled",
    "late_dropped",
    "orphaned",
    "steal_requests",
    "steals_empty",
    "nudges_sent",
    "given_back",
    "abandoned",
)
# Routing's counters (mesh.node.routing), likewise.
ROUTING_COUNTERS = (
    "offloaded",
    "served_by_gateway",
    "offload_failed",
    "offload_cancelled",
    "offload_in_flight",
    "refused",
)


class RequestCounters:
    """Counts the requests a node answers, by outcome."""

    def __init__(self) -> None:
        self.requests = 0
        self.served = 0
        self.failed = 0
        # Cancelled before an answer: neither served nor failed.
        self.client_gone = 0
        self.in_flight = 0
        self.errors: Counter[str] = Counter()

    def refused(self, exc: MeshError) -> None:
        """A request failed before it was routed (malformed, or the node is leaving)."""
        self.requests += 1
        self._failed(exc)

    @contextmanager
    def routing(self) -> Iterator[None]:
        """Count the request routed inside the block: served, failed with its code,
        or (cancelled) client_gone."""
        self.requests += 1
        self.in_flight += 1
        try:
            yield
        except MeshError as exc:
            self._failed(exc)
            raise
        except Exception:
            # A bug: the client hears InternalError (the RPC and HTTP layers
            # map it so), and so do the counters, or the identity would break.
            self._failed(InternalError("unexpected error"))
            raise
        except asyncio.CancelledError:
            # Nobody hears an answer: not a failure the client was told of.
            self.client_gone += 1
            raise
        else:
            self.served += 1
        finally:
            self.in_flight -= 1

    def to_status(self, work: Mapping[str, int], routing: Mapping[str, int]) -> dict[str, Any]:
        """The figures for ``status()``, with the scheduler's and routing's own counters."""
        return {
            "requests": self.requests,
            "served": self.served,
            "failed": self.failed,
            "client_gone": self.client_gone,
            "in_flight": self.in_flight,
            "errors": dict(self.errors),
            **{name: work.get(name, 0) for name in WORK_COUNTERS},
            **{name: routing.get(name, 0) for name in ROUTING_COUNTERS},
        }

    def _failed(self, exc: MeshError) -> None:
        self.failed += 1
        self.errors[exc.code] += 1
