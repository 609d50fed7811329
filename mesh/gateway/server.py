"""``edgemesh gateway``: the cloud side of the mesh, an Open Inference Protocol V2 server.

Nodes hand it the requests the mesh cannot take. It answers them one of two
ways, behind the same HTTP API (:mod:`mesh.http.server`):

* :class:`RuntimeService` runs the models itself with onnxruntime, with a
  fixed number of slots and a bounded queue: a request that finds the queue
  full is refused at once with 503, so a node hears "busy" and not a
  timeout. With emulation each call is padded to a known service time,
  which gives the gateway a known capacity (slots / service time) for
  benchmarks; the real model still runs and its real outputs come back.
* :class:`UpstreamService` forwards everything to another V2 server
  (Triton, KServe, MLServer) through a :class:`~mesh.gateway.client.GatewayClient`,
  which is how a user scales the cloud side.

:class:`Gateway` mirrors :class:`~mesh.node.node.Node`: ``run()`` owns all of it in
one TaskGroup, ``stop()`` ends it at once, ``drain()`` ends it gracefully
(new requests get 503 with code ``Draining``, those in flight finish, and what
is still in flight when ``drain_timeout_s`` passes gets 503 ``Draining``),
``ready`` is set once it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from mesh.config import Emulation, GatewayServerConfig
from mesh.core.policy.admission import GatewayLoad, admit
from mesh.core.scheduling.emulation import EmulatedDevice
from mesh.core.wire.catalog import IndexEntry
from mesh.core.wire.oip import model_metadata
from mesh.core.wire.requests import InferRequest
from mesh.errors import ConfigError, DeadlineExceeded, Draining, MeshError, Overloaded
from mesh.gateway.client import GatewayClient
from mesh.http.server import HttpServer
from mesh.listening import bind_tcp, write_ready_file
from mesh.runtime.runtime import Runtime
from mesh.service import Answer, EdgemeshServer, InferenceService

__all__ = ["Gateway", "RuntimeService", "UpstreamService"]

log = logging.getLogger(__name__)

# How often a draining gateway checks whether its requests are done, and how
# long the answers of those it gave up on get to be written.
_DRAIN_POLL_S = 0.01
_LAST_WORDS_S = 1.0


class RuntimeService(EdgemeshServer):
    """Serves the models of a :class:`~mesh.runtime.runtime.Runtime`, at most ``slots`` at a time.

    Up to ``queue_cap`` requests wait for a slot; one more is refused with
    Overloaded, and so is one that, by the measured service time, could not
    finish before its deadline (it is better told now than late). A request
    whose deadline passes while it waits anyway is answered with
    DeadlineExceeded when it gets its slot, instead of being run late; one
    whose deadline passes while it runs is stopped.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        slots: int,
        queue_cap: int,
        emulation: Emulation | None = None,
        name: str = "gateway",
    ) -> None:
        """Serve ``runtime``; ``name`` is what answers report as ``ran_on``."""
        if slots < 1 or queue_cap < 0:
            raise ConfigError(f"slots must be >= 1 and queue_cap >= 0; got {slots}, {queue_cap}")
        self.name = name
        self.slots = slots
        self.queue_cap = queue_cap
        self._runtime = runtime
        self._slots = asyncio.Semaphore(slots)
        self._device = None if emulation is None else EmulatedDevice(emulation.service_s, slots)
        self._emulated_s = None if emulation is None else emulation.service_s
        self._waiting = 0
        self._running = 0
        self.served = 0
        self.refused = 0
        self.expired = 0

    def ready(self) -> bool:
        """Always: the models were loaded before the service was made."""
        return True

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """The V2 metadata of a model served here (its newest version's
        signature, and every version served); ModelNotFound otherwise."""
        metadata = model_metadata(self._runtime.spec(name))
        metadata["versions"] = [s.version for s in self._runtime.versions(name)]
        return metadata

    async def repository_index(self) -> list[IndexEntry]:
        """The runtime's models: one entry per version served."""
        return [IndexEntry(spec.name, spec.version) for spec in self._runtime.specs()]

    def status(self) -> dict[str, Any]:
        """Slots, queue and counters, for logs and tests."""
        return {
            "slots": self.slots,
            "running": self._running,
            "waiting": self._waiting,
            "queue_cap": self.queue_cap,
            "served": self.served,
            "refused": self.refused,
            "expired": self.expired,
        }

    async def infer(self, request: InferRequest) -> Answer:
        """Run ``request`` when a slot is free.

        Overloaded at once when :func:`~mesh.core.policy.admission.admit`
        says no: the queue is full, or it could not finish in time.
        """
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        # Unknown models or versions and bad inputs are refused before they take a place.
        sha = self._runtime.spec(request.model, request.version).sha256
        self._runtime.check_inputs(request.model, request.inputs, sha)
        remaining_s = None if request.deadline_ms is None else request.deadline_ms / 1000
        deadline = None if remaining_s is None else arrived + remaining_s
        load = GatewayLoad(
            name=self.name,
            slots=self.slots,
            queue_cap=self.queue_cap,
            running=self._running,
            waiting=self._waiting,
            full=self._slots.locked(),
        )
        # Only a request with a deadline needs the service time.
        service_s = None if remaining_s is None else self._service_s(request.model)
        admission = admit(load, service_s=service_s, remaining_s=remaining_s)
        if not admission.admitted:
            self.refused += 1
            raise Overloaded(admission.reason)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            return await self._run(request, arrived, deadline)
        finally:
            self._running -= 1
            self._slots.release()

    def _service_s(self, model: str) -> float | None:
        """Seconds one call of ``model`` keeps a slot busy; None before the first call.

        The emulated device's time, or the runtime's own average of the
        model's run on a worker thread. Not the wall time a slot was held:
        under a burst that is mostly this event loop reading other requests,
        which the slots do not make any longer.
        """
        if self._emulated_s is not None:
            return self._emulated_s
        for load in self._runtime.load():
            if load.name == model:
                return load.service_ewma_s
        return None

    async def _run(self, request: InferRequest, arrived: float, deadline: float | None) -> Answer:
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() >= deadline:
            self.expired += 1
            raise DeadlineExceeded(
                f"request waited {(loop.time() - arrived) * 1000:.0f} ms for a slot on "
                f"gateway {self.name}; its deadline was {request.deadline_ms:.0f} ms"
            )
        try:
            async with asyncio.timeout_at(deadline):
                outputs = await self._runtime.infer(
                    request.model, request.inputs, version=request.version
                )
                if self._device is not None:
                    # The slot stays taken until the emulated device would be done.
                    await asyncio.sleep(max(0.0, self._device.finish_at(arrived) - loop.time()))
        except TimeoutError:
            self.expired += 1
            raise DeadlineExceeded(
                f"model '{request.model}' did not finish within the request's deadline of "
                f"{request.deadline_ms:.0f} ms on gateway {self.name}"
            ) from None
        self.served += 1
        return Answer(outputs=outputs, ran_on=self.name)


class UpstreamService(EdgemeshServer):
    """Forwards every request to an upstream Open Inference Protocol server."""

    def __init__(self, client: GatewayClient, *, name: str = "gateway") -> None:
        """Forward through ``client`` (opened by the caller); answers say ``ran_on=name``."""
        self.name = name
        self._client = client

    def ready(self) -> bool:
        """Whether the upstream is believed to work (its circuit is closed)."""
        return self._client.state == "closed"

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """The upstream's metadata of ``name``, as it gave it."""
        return await self._client.model_metadata(name)

    async def repository_index(self) -> list[IndexEntry]:
        """The upstream's index; MethodNotFound if it keeps none (then they are unknown)."""
        return list(await self._client.repository_index())

    async def infer(self, request: InferRequest) -> Answer:
        """Forward ``request``; the upstream's errors come back mapped onto MeshError."""
        outputs = await self._client.infer(
            request.model,
            request.inputs,
            deadline_s=None if request.deadline_ms is None else request.deadline_ms / 1000,
            request_id=request.request_id,
        )
        return Answer(outputs=outputs, ran_on=self.name)


class _DrainingFront(EdgemeshServer):
    """What the HTTP server calls: the service, behind a door that a drain closes.

    It counts the requests in flight, refuses new ones with Draining once
    the gateway drains, and, when the drain timeout passes, cuts those
    still in flight short with Draining (503) rather than leaving them to a
    dropped connection.
    """

    def __init__(self, service: InferenceService, name: str) -> None:
        self._service = service
        self._name = name
        self.draining = False
        self._abandoned = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def in_flight(self) -> int:
        """Requests being answered now."""
        return len(self._tasks)

    def ready(self) -> bool:
        return not self.draining and self._service.ready()

    async def model_metadata(self, name: str) -> dict[str, Any]:
        return await self._service.model_metadata(name)

    async def repository_index(self) -> list[IndexEntry]:
        return await self._service.repository_index()

    async def infer(self, request: InferRequest) -> Answer:
        if self.draining:
            raise Draining(
                f"gateway {self._name} is draining (shutting down) and takes no new "
                "requests; send this one elsewhere"
            )
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await self._service.infer(request)
        except asyncio.CancelledError:
            # Our own cancellation (abandon) and nobody else's: answer it.
            if self._abandoned and task.uncancel() == 0:
                raise Draining(
                    f"gateway {self._name} shut down before request "
                    f"{request.request_id or ''} for {request.model} was answered (its drain "
                    "timeout passed); send it again elsewhere"
                ) from None
            raise
        finally:
            self._tasks.discard(task)

    def abandon(self) -> None:
        """The drain timed out: stop every request in flight with Draining."""
        self._abandoned = True
        for task in self._tasks:
            task.cancel()


class Gateway:
    """An ``edgemesh gateway`` process's worth of serving, in one TaskGroup.

    ``runtime`` may be passed in (tests share one); otherwise the gateway
    loads its own from ``config.runtime`` (unless it forwards upstream) and
    closes it on exit.
    """

    def __init__(self, config: GatewayServerConfig, runtime: Runtime | None = None) -> None:
        self.config = config
        self.ready = asyncio.Event()
        self._runtime = runtime
        self._owns_runtime = runtime is None
        self._stop = asyncio.Event()
        self._drain = asyncio.Event()
        self._server: HttpServer | None = None
        # Bound by run() before anything else (see mesh.listening).
        self._sock: socket.socket | None = None
        self.service: InferenceService | None = None

    @property
    def port(self) -> int:
        """The HTTP port the gateway listens on (known once :attr:`ready` is set)."""
        port = None if self._server is None else self._server.bound_port
        if port is None:
            raise RuntimeError("the gateway is not listening yet")
        return port

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the gateway, for clients on this machine."""
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        scheme = "http" if self.config.http.tls_cert is None else "https"
        return f"{scheme}://{host}:{self.port}"

    def stop(self) -> None:
        """Ask :meth:`run` to shut down now; safe to call from a signal handler."""
        self._stop.set()

    def drain(self) -> None:
        """Ask :meth:`run` to refuse new requests (503 Draining), let those in
        flight finish, and return within ``config.drain_timeout_s``; safe to
        call from a signal handler. :meth:`stop` cuts it short."""
        self._drain.set()

    async def run(self) -> None:
        """Serve until :meth:`stop` is called or the task is cancelled.

        The port is bound first, before the models load or the upstream is
        asked: one in use is AddressInUse naming --port, at once.
        """
        config = self.config
        sock = self._sock = bind_tcp(config.host, config.http.port or 0, flag="--port")
        try:
            await self._run()
        finally:
            sock.close()  # the server closed it already, unless it never started

    async def _run(self) -> None:
        config = self.config
        if config.upstream is not None:
            async with GatewayClient(config.upstream, label="the upstream") as client:
                if not await client.ready():
                    log.warning(
                        "upstream %s is not ready yet; serving anyway, requests may fail",
                        client.url,
                    )
                await self._serve(UpstreamService(client, name=config.name), client.url)
            return
        if self._runtime is None:
            # Loading verifies hashes and builds sessions: seconds of CPU.
            self._runtime = await asyncio.to_thread(Runtime, config.runtime)
        runtime = self._runtime
        try:
            service = RuntimeService(
                runtime,
                slots=config.slots or runtime.threads,
                queue_cap=config.queue_cap,
                emulation=config.emulation,
                name=config.name,
            )
            await self._serve(service, "models " + (", ".join(runtime.names) or "(none)"))
        finally:
            if self._owns_runtime:
                await runtime.aclose()

    async def _serve(self, service: InferenceService, serving: str) -> None:
        self.service = service
        front = _DrainingFront(service, self.config.name)
        server = self._server = HttpServer(
            front, host=self.config.host, config=self.config.http, sock=self._sock
        )
        listening = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tasks:
                serving_task = tasks.create_task(server.serve(listening))
                # Either it listens, or serve() fails and the TaskGroup
                # raises that instead of waiting forever.
                await listening.wait()
                self._announce(serving)
                await self._until_asked()
                if self._drain.is_set() and not self._stop.is_set():
                    await self._drain_requests(front)
                log.info("gateway %s stopping", self.config.name)
                serving_task.cancel()
        except* MeshError as group:
            # One failure that says what went wrong (a port in use) reads
            # better for the user than an exception group.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _until_asked(self) -> None:
        """Wait for :meth:`stop` or :meth:`drain`."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._stop, self._drain)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _drain_requests(self, front: _DrainingFront) -> None:
        timeout_s = self.config.drain_timeout_s
        log.info(
            "gateway %s draining: %d requests in flight, at most %g s",
            self.config.name,
            front.in_flight,
            timeout_s,
        )
        front.draining = True
        try:
            async with asyncio.timeout(timeout_s):
                await self._until_done(front)
        except TimeoutError:
            log.warning(
                "gateway %s: drain timeout of %g s passed; answering %d requests with Draining",
                self.config.name,
                timeout_s,
                front.in_flight,
            )
            front.abandon()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LAST_WORDS_S):
                    await self._until_done(front)

    async def _until_done(self, front: _DrainingFront) -> None:
        # Polled: the requests are aiohttp's handler tasks, which signal nothing.
        while front.in_flight and not self._stop.is_set():  # noqa: ASYNC110
            await asyncio.sleep(_DRAIN_POLL_S)

    def _announce(self, serving: str) -> None:
        config = self.config
        # "gateway gateway listening" under the default name reads as a typo.
        who = "gateway" if config.name == "gateway" else f"gateway {config.name}"
        log.info(
            "%s listening on %s://%s:%d, serving %s%s",
            who,
            "http" if config.http.tls_cert is None else "https",
            config.host,
            self.port,
            serving,
            ""
            if config.emulation is None
            else f" (emulating {config.emulation.service_ms:g} ms per call)",
        )
        if config.open_to_network:
            log.warning(
                "%s is OPEN: anyone who can reach %s:%d can run its models. "
                "Give it --http-token-file (and --tls-cert/--tls-key) to close it.",
                who,
                config.host,
                self.port,
            )
        if config.ready_file is not None:
            info = {"name": config.name, "host": config.host, "http_port": self.port}
            write_ready_file(config.ready_file, info)
        self.ready.set()
