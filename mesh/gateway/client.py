"""The node's client for its cloud gateway: Open Inference Protocol V2 over HTTP, with a breaker.

The gateway is any V2 REST server: ``edgemesh gateway`` (see
:mod:`mesh.gateway.server`), Triton, KServe or MLServer. Tensors travel in
Triton's binary tensor extension both ways, so an array is never spelled
out as JSON numbers.

A gateway that stops answering is not hammered: after
``breaker.failure_threshold`` consecutive failures the circuit opens and
requests fail at once with :class:`~mesh.errors.PeerUnavailable`, saying
why and when the next probe is. The client probes ``/v2/health/ready``
itself when the open period is over, so no user request is spent finding
out whether the gateway is back. Which outcomes count as failures is
:func:`mesh.core.policy.breaker.judge`'s rule; this module only maps what
aiohttp and asyncio say onto its plain values. A 503, for one, is not a
failure: the gateway is alive and says it is busy, which the caller hears
as :class:`~mesh.errors.Overloaded`.

Use it as an async context manager; the block owns the connection pool and
the probe loop::

    async with GatewayClient(GatewayClientConfig("http://gw:8000")) as gateway:
        outputs = await gateway.infer("digits-large", {"X": x}, deadline_s=0.5)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import numpy as np
from numpy.typing import NDArray

from mesh.config import GatewayClientConfig, check_gateway_url
from mesh.core.policy.breaker import BreakerState, CircuitBreaker, Exchange, Outcome, judge
from mesh.core.wire.catalog import IndexEntry, parse_index_reply
from mesh.core.wire.oip import encode_infer_request, parse_infer_response, parse_model_metadata
from mesh.core.wire.tensors import Tensors
from mesh.errors import (
    ConfigError,
    DeadlineExceeded,
    MeshError,
    MethodNotFound,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
)
from mesh.gateway.replies import (
    Reply,
    clip,
    error_message,
    has_binary_extension,
    refused_reason,
    status_error,
    transport_reason,
)
from mesh.gateway.session import new_session, tls_for

__all__ = ["BINARY_HEADER", "GatewayClient"]

log = logging.getLogger(__name__)

# Triton's binary tensor extension: the length of the JSON part of a body.
BINARY_HEADER = "Inference-Header-Content-Length"
# A probe is a health check: a gateway that takes longer than this to say
# it is ready is not ready.
_PROBE_TIMEOUT_S = 2.0


class GatewayClient:
    """A V2 REST client for one gateway, guarded by a circuit breaker.

    ``async with client:`` opens the connection pool (at most
    ``max_in_flight`` connections) and starts the probe loop in a TaskGroup;
    leaving the block stops both. Requests outside the block are a bug.
    """

    def __init__(self, config: GatewayClientConfig, *, label: str = "the gateway") -> None:
        """Check the URL, limits and credentials; ConfigError says what is wrong.

        ``label`` names the server in the errors raised (``"the upstream"``
        for a forwarding gateway): errors travel to clients, so they never
        carry the URL, which stays in logs and :meth:`status`.
        """
        self.url = check_gateway_url("gateway url", config.url)
        self._label = label
        if config.timeout_s <= 0:
            raise ConfigError(f"gateway timeout_s must be positive, got {config.timeout_s!r}")
        if config.max_in_flight < 1:
            raise ConfigError(f"gateway max_in_flight must be >= 1, got {config.max_in_flight!r}")
        self.config = config
        self._tls = tls_for(self.url, config, label)
        self._breaker = CircuitBreaker(config.breaker)
        self._session: aiohttp.ClientSession | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._probe_task: asyncio.Task[None] | None = None
        # Set when the circuit opens, so the probe loop wakes at once.
        self._opened = asyncio.Event()
        self._in_flight = 0
        self.sent = 0
        # Requests that ran out of time while the gateway answered others.
        self.slow = 0
        self._last_answer_at = -math.inf
        # Whether the gateway takes binary tensors; None until asked.
        self._binary: bool | None = None
        self._negotiating = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("GatewayClient is already open")
        stack = contextlib.AsyncExitStack()
        try:
            self._session = await stack.enter_async_context(new_session(self.config, self._tls))
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            self._probe_task = tasks.create_task(self._probe_loop(), name="gateway-probe")
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        if self._probe_task is not None:
            self._probe_task.cancel()
        # The block's own exception is not handed to the TaskGroup, which
        # would wrap it in an ExceptionGroup; it propagates as it is.
        await stack.aclose()
        self._session = None
        self._probe_task = None

    # --- state ------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The circuit: ``"closed"`` (sending), ``"open"`` or ``"half_open"`` (probing)."""
        return self._breaker.state

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._in_flight

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker itself, for status pages and tests; read it, do not drive it."""
        return self._breaker

    def status(self) -> dict[str, Any]:
        """For the node's ``status()``: where the gateway is and how it has been doing."""
        breaker = self._breaker
        now = self._now()
        return {
            "url": self.url,
            "state": breaker.state,
            "retry_in_s": round(breaker.retry_in(now), 3),
            "last_failure": breaker.last_failure,
            "in_flight": self._in_flight,
            "max_in_flight": self.config.max_in_flight,
            "sent": self.sent,
            "slow": self.slow,
            "failures": breaker.failures,
            "opened": breaker.opened,
            "probes": breaker.probes,
        }

    # --- requests ---------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        *,
        deadline_s: float | None = None,
        request_id: str | None = None,
        version: str | None = None,
    ) -> Tensors:
        """Run ``model`` (``version`` of it, when given) on the gateway; outputs keyed by name.

        Waits at most ``deadline_s`` (default: the config's ``timeout_s``).
        Raises PeerUnavailable (circuit open, no connection), Overloaded (503,
        or too many requests in flight here), DeadlineExceeded, ModelNotFound,
        InvalidInput, MessageTooLarge, InferenceFailed, RemoteError or
        ProtocolError.
        """
        limit = started_limit = self.config.timeout_s if deadline_s is None else deadline_s
        started = self._now()
        binary = await self._binary_supported(limit)
        limit -= self._now() - started
        # deadline_ms is edgemesh's extension: our gateway drops a request
        # that would run too late. Other V2 servers ignore the parameter.
        parameters = None if deadline_s is None else {"deadline_ms": limit * 1000}
        body, header_length = encode_infer_request(
            dict(inputs), request_id=request_id, binary=binary, parameters=parameters
        )
        headers = {"Content-Type": "application/json"}
        if header_length is not None:
            headers = {
                "Content-Type": "application/octet-stream",
                BINARY_HEADER: str(header_length),
            }
        path = f"/v2/models/{quote(model, safe='')}"
        if version is not None:
            # A pinned version runs as that version there too, or not at all.
            path += f"/versions/{quote(version, safe='')}"
        path += "/infer"
        reply = await self._send(
            "POST", path, limit, data=body, headers=headers, budget_s=started_limit
        )
        self._raise_for_status(reply, model)
        length = reply.headers.get(BINARY_HEADER)
        try:
            response = parse_infer_response(reply.body, None if length is None else int(length))
        except (ProtocolError, ValueError) as exc:
            what = f"its answer to {model!r} is not a V2 infer response: {exc}"
            raise self._garbage(what) from None
        self._count(Outcome(status=200))
        return {name: np.asarray(value) for name, value in response.outputs.items()}

    async def _binary_supported(self, limit_s: float) -> bool:
        """Whether the gateway speaks Triton's binary tensor extension.

        Triton and edgemesh do and say so in ``GET /v2``; MLServer and KServe
        do not and take JSON only. Asked once, and again after an outage,
        since the server that comes back may be another one.
        """
        if self._binary is None:
            async with self._negotiating:
                if self._binary is None:
                    reply = await self._send("GET", "/v2", limit_s)
                    if reply.status in (401, 403):
                        # Asked again once the token is fixed; the request would fail anyway.
                        self._raise_for_status(reply, "")
                    self._binary = reply.status == 200 and has_binary_extension(reply.body)
                    self._count(Outcome(status=reply.status), exchange="negotiation")
                    log.debug("gateway %s binary tensors: %s", self.url, self._binary)
        return self._binary

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """The V2 metadata object of ``name`` on the gateway; ModelNotFound if it has none."""
        reply = await self._send("GET", f"/v2/models/{quote(name, safe='')}", self.config.timeout_s)
        self._raise_for_status(reply, name)
        try:
            metadata = parse_model_metadata(json.loads(reply.body))
        except (ProtocolError, ValueError) as exc:
            what = f"its metadata of {name!r} is not V2 model metadata: {exc}"
            raise self._garbage(what) from None
        self._count(Outcome(status=200))
        return metadata

    async def ready(self) -> bool:
        """Whether the gateway says it is ready (``GET /v2/health/ready``).

        A health check: it ignores the breaker and does not feed it.
        """
        outcome, _ = await self._check_ready()
        return judge(outcome, "probe") == "works"

    async def check(self) -> tuple[bool, str]:
        """Whether the gateway answers a health check, and a line for the log that says so.

        For start-up: one short check (at most 2 s), outside the breaker.
        """
        outcome, reason = await self._check_ready()
        if judge(outcome, "probe") == "works":
            return True, f"gateway {self.url}: ready"
        if outcome.status in (401, 403):
            what = f"{reason}; check --gateway-token-file"
        elif outcome.status is not None:
            what = f"is not ready ({reason})"
        else:
            what = f"did not answer ({reason})"
        return False, (
            f"gateway {self.url} {what}; requests the mesh cannot serve get "
            "Overloaded until it does"
        )

    async def repository_index(self) -> tuple[IndexEntry, ...]:
        """The gateway's ready models (``POST /v2/repository/index``).

        Like :meth:`check`: one short exchange (at most 2 s), outside the
        breaker, for listing and not for serving. MethodNotFound when the
        gateway has no repository extension (404/405), PeerUnavailable when
        it does not answer, ProtocolError when the reply is not an index.
        """
        session = self._require_session()
        limit = min(_PROBE_TIMEOUT_S, self.config.timeout_s)
        try:
            async with (
                asyncio.timeout(limit),
                session.post(self.url + "/v2/repository/index", json={}) as response,
            ):
                reply = Reply(response.status, response.headers, await response.read())
        except TimeoutError:
            raise PeerUnavailable(
                f"{self._label} did not list its models within {limit * 1000:.0f} ms"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerUnavailable(f"{self._label}: {transport_reason(exc)}") from None
        if reply.status in (404, 405):
            raise MethodNotFound(
                f"{self._label} does not list its models (no repository index: HTTP {reply.status})"
            )
        if reply.status != 200:
            raise self._status_error(reply)
        try:
            return parse_index_reply(json.loads(reply.body))
        except (ProtocolError, ValueError) as exc:
            raise ProtocolError(f"{self._label}: its repository index: {exc}") from None

    async def _check_ready(self) -> tuple[Outcome, str]:
        """How a health check ended, and what to say if it did not pass."""
        session = self._require_session()
        limit = min(_PROBE_TIMEOUT_S, self.config.timeout_s)
        try:
            async with (
                asyncio.timeout(limit),
                session.get(self.url + "/v2/health/ready") as response,
            ):
                await response.read()
                status = response.status
        except TimeoutError:
            reason = f"no answer to a health check within {limit * 1000:.0f} ms"
            return Outcome(error="timeout"), reason
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome(error="unreachable"), transport_reason(exc)
        if status in (401, 403):
            return Outcome(status=status), refused_reason(status)
        return Outcome(status=status), f"health check answered HTTP {status}"

    async def _send(
        self,
        method: str,
        path: str,
        limit_s: float,
        *,
        budget_s: float | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """One HTTP exchange under the breaker and the in-flight limit."""
        session = self._require_session()
        now = self._now()
        if not self._breaker.allow(now):
            raise PeerUnavailable(self._refusal(now))
        if self._in_flight >= self.config.max_in_flight:
            raise Overloaded(
                f"{self._label} already has {self._in_flight} requests in flight "
                f"(max_in_flight {self.config.max_in_flight})"
            )
        if limit_s <= 0:
            raise DeadlineExceeded("the deadline passed before the request could go to the gateway")
        self._in_flight += 1
        self.sent += 1
        sent_at = now
        try:
            async with (
                asyncio.timeout(limit_s),
                session.request(method, self.url + path, data=data, headers=headers) as response,
            ):
                body = await response.read()
                self._last_answer_at = self._now()
                return Reply(response.status, response.headers, body)
        except TimeoutError:
            # The whole budget, not what was left of it for this exchange.
            waited_ms = (budget_s or limit_s) * 1000
            timeout = Outcome(error="timeout", answered_others=self._last_answer_at > sent_at)
            self._count(timeout, f"no answer within {waited_ms:.0f} ms")
            raise DeadlineExceeded(
                f"{self._label} did not answer within {waited_ms:.0f} ms"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = transport_reason(exc)
            self._count(Outcome(error="unreachable"), reason)
            raise PeerUnavailable(f"{self._label} is unavailable: {reason}") from None
        finally:
            self._in_flight -= 1

    def _raise_for_status(self, reply: Reply, model: str) -> None:
        """Count a non-200 answer for the breaker and raise it as a MeshError."""
        status = reply.status
        if status == 200:
            return
        text, _ = error_message(reply)
        if status in (401, 403):
            self._count(Outcome(status=status), refused_reason(status))
        else:
            self._count(Outcome(status=status), f"HTTP {status}: {clip(text, 80)}")
        raise self._status_error(reply)

    def _status_error(self, reply: Reply) -> MeshError:
        """The MeshError a non-200 answer stands for, worded for whoever reads it."""
        if reply.status in (401, 403):
            # Not AuthError: our client did nothing wrong and must not be told
            # its own credentials failed. The server is unusable to us until
            # the token is fixed; the log says which setting to fix.
            return PeerUnavailable(f"{self._label} {refused_reason(reply.status)}")
        text, code = error_message(reply)
        return status_error(reply.status, code, f"{self._label}: {text}")

    def _garbage(self, what: str) -> ProtocolError:
        self._count(Outcome(error="garbled"), "garbled answer")
        return ProtocolError(f"{self._label}: {what}")

    def _refusal(self, now: float) -> str:
        breaker = self._breaker
        if breaker.state == "half_open":
            when = "a probe is running now"
        else:
            when = f"next probe in {breaker.retry_in(now):.1f} s"
        return (
            f"{self._label} is unavailable: circuit open after "
            f"{breaker.consecutive_failures} failures (last: {breaker.last_failure}); {when}"
        )

    # --- the breaker and the probe loop ------------------------------------------

    def _count(self, outcome: Outcome, reason: str = "", exchange: Exchange = "request") -> None:
        """Record for the breaker what ``outcome`` says of the gateway; ``reason`` if a failure."""
        verdict = judge(outcome, exchange)
        if verdict == "works":
            self._breaker.record_success(self._now())
        elif verdict == "failure":
            self._failed(reason)
        elif verdict == "slow":
            self.slow += 1

    def _failed(self, reason: str) -> None:
        before = self._breaker.state
        self._breaker.record_failure(self._now(), reason)
        if before == "closed" and self._breaker.state == "open":
            log.warning(
                "gateway %s is unavailable (%s); circuit open after %d failures, probing in %.1f s",
                self.url,
                reason,
                self._breaker.consecutive_failures,
                self._breaker.retry_in(self._now()),
            )
            self._opened.set()

    async def _probe_loop(self) -> None:
        """Probe the gateway whenever the open circuit's period is over."""
        breaker = self._breaker
        while True:
            if breaker.state != "open":
                self._opened.clear()
                await self._opened.wait()
                continue
            delay = breaker.retry_in(self._now())
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            breaker.begin_probe(self._now())
            outcome, reason = await self._check_ready()
            if judge(outcome, "probe") == "works":
                breaker.probe_succeeded(self._now())
                self._binary = None
                log.info("gateway %s is back; circuit closed", self.url)
            else:
                breaker.probe_failed(self._now(), reason)
                log.debug(
                    "gateway %s still unavailable (%s); next probe in %.1f s",
                    self.url,
                    reason,
                    breaker.retry_in(self._now()),
                )

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the GatewayClient inside `async with`")
        return self._session

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
