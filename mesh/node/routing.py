"""The entry node's routing: the mesh when it can cope, the cloud gateway when not.

Every request that enters a node (over msgpack-RPC or HTTP) comes through
:meth:`Fallback.infer`. The rule itself is pure (:func:`mesh.core.policy.capacity.place`,
asked through the scheduler); this module carries it out: the request is
queued in the mesh, sent to the gateway, or refused at once with the reason.
Nothing waits on a gateway that cannot answer: the gateway client's breaker
fails such calls fast, and each call is bounded by the request's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from mesh.config import FallbackConfig
from mesh.core.policy.capacity import Placement
from mesh.core.wire.requests import InferRequest
from mesh.errors import InvalidInput, MeshError, ModelNotFound, Overloaded
from mesh.node.work_sharing import WorkSharing
from mesh.service import Answer

__all__ = ["GATEWAY", "Fallback", "Gateway"]

log = logging.getLogger(__name__)

# What an answer's ran_on says when the gateway ran the request.
GATEWAY = "gateway"


class Gateway(Protocol):
    """The part of :class:`mesh.gateway.client.GatewayClient` routing needs."""

    @property
    def url(self) -> str: ...

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        *,
        deadline_s: float | None,
        request_id: str | None,
        version: str | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]: ...


class Fallback:
    """Routes each request entering this node; counts what it sent where."""

    def __init__(self, work: WorkSharing, gateway: Gateway | None, config: FallbackConfig) -> None:
        self._work = work
        self._gateway = gateway
        self._config = config
        self.counters: Counter[str] = Counter()
        # Time spent deciding, for status(): the rule must stay cheap.
        self._decisions = 0
        self._deciding_s = 0.0

    async def infer(self, request: InferRequest) -> Answer:
        """Answer ``request`` from the mesh or the gateway, or refuse it with the reason."""
        # A request without a deadline is never expired: its client asked for
        # an answer, however late. With a gateway the default deadline judges
        # whether the gateway would be the better place for it; without one
        # it queues here (bounded by the queue cap) and is not refused for time.
        started = time.perf_counter()
        placement = self._work.placement(
            request,
            gateway=self._gateway is not None,
            default_deadline_ms=self._config.default_deadline_ms,
        )
        self._deciding_s += time.perf_counter() - started
        self._decisions += 1
        if not placement.offload:
            return await self._work.infer(request)
        if self._gateway is None:
            if placement.no_holder:
                # Nothing else could serve it: the mesh's own ModelNotFound.
                return await self._work.infer(request)
            self.counters["refused"] += 1
            raise Overloaded(
                f"request for '{request.model}' refused: {placement.reason}; "
                "this node has no cloud gateway to hand it to (see --gateway)"
            )
        return await self._offload(self._gateway, request, placement)

    async def _offload(
        self, gateway: Gateway, request: InferRequest, placement: Placement
    ) -> Answer:
        # Every offload ends in exactly one of served_by_gateway,
        # offload_failed (any error, the client's own InvalidInput included)
        # or offload_cancelled (the client left while the gateway worked),
        # so offloaded = those three + offload_in_flight at every moment.
        counters = self.counters
        counters["offloaded"] += 1
        counters["offload_in_flight"] += 1
        outcome = "offload_failed"
        try:
            outputs = await self._call_gateway(gateway, request, placement)
            outcome = "served_by_gateway"
        except asyncio.CancelledError:
            outcome = "offload_cancelled"
            raise
        finally:
            counters["offload_in_flight"] -= 1
            counters[outcome] += 1
        return Answer(outputs, GATEWAY)

    @staticmethod
    async def _call_gateway(
        gateway: Gateway, request: InferRequest, placement: Placement
    ) -> dict[str, np.ndarray[Any, Any]]:
        try:
            return await gateway.infer(
                request.model,
                request.inputs,
                deadline_s=None if request.deadline_ms is None else request.deadline_ms / 1000,
                request_id=request.request_id,
                version=request.version,
            )
        except InvalidInput:
            raise  # the client's inputs, not the gateway's health
        except ModelNotFound:
            if placement.no_holder:
                # Not the gateway's URL: this goes to clients (issue 19).
                gateway_too = (
                    "neither does the gateway"
                    if request.version is None
                    else f"the gateway does not serve version '{request.version}' of it"
                )
                raise ModelNotFound(f"{placement.reason}, and {gateway_too}") from None
            raise
        except MeshError as exc:
            # Whatever went wrong at the gateway (down, circuit open, busy,
            # too slow), the client hears one thing: no capacity now, and why.
            if placement.no_holder:
                raise Overloaded(
                    f"{placement.reason}, and the gateway cannot take it: {exc.message}"
                ) from None
            raise Overloaded(
                f"request for '{request.model}' refused: {placement.reason}, "
                f"and the gateway cannot take it: {exc.message}"
            ) from None

    def status(self) -> dict[str, Any]:
        """Routing figures for ``status()``."""
        return {
            "default_deadline_ms": self._config.default_deadline_ms,
            "queue_cap": self._config.queue_cap,
            "decisions": self._decisions,
            "decision_us_mean": round(self._deciding_s / self._decisions * 1e6, 2)
            if self._decisions
            else None,
        }
