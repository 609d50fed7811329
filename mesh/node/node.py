"""One edgemesh node: the RPC server wired to the model runtime.

:meth:`Node.run` owns everything the node starts, inside one TaskGroup, and
returns only after all of it has stopped. The methods it serves:

* ``infer(model, inputs[, options])`` → map of output name to tensor; the
  request may run here, on a peer that steals it (see :mod:`mesh.node.work_sharing`), or
  on the cloud gateway when the mesh cannot serve it in time (see
  :mod:`mesh.node.routing`)
* ``models()`` → the models served, with their signatures
* ``status()`` → identity, models and counters
* ``ping()`` → ``"pong"``
* ``hello(...)`` → the mesh-key handshake (handled in :mod:`mesh.rpc`)
* ``drain()`` → begin a graceful shutdown (as SIGTERM does); see :meth:`Node.drain`
* ``reload()`` → rescan the model directories now (as SIGHUP does) and say
  what changed; see :mod:`mesh.node.model_store`
* between peers: ``steal`` and the ``gossip``, ``result``, ``handoff``,
  ``cancel``, ``nudge``, ``giveback`` and ``leaving`` notifications

With ``--http-port`` the node also serves the Open Inference Protocol (V2
REST, :mod:`mesh.http.server`); a request that comes in that way is routed
exactly like an RPC one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections import Counter
from typing import Any

from mesh._version import __version__
from mesh.config import NodeConfig
from mesh.core.membership.leaving import Leaving
from mesh.core.membership.peers import Load, ModelHolding
from mesh.core.scheduling.draining import refused
from mesh.core.wire.auth import mesh_id
from mesh.core.wire.requests import InferRequest
from mesh.errors import MeshError
from mesh.gateway.client import GatewayClient
from mesh.http.server import HttpServer
from mesh.mdns import MdnsDiscovery
from mesh.node.catalog import metadata_in_mesh, models_in_mesh
from mesh.node.counters import RequestCounters
from mesh.node.draining import drain_and_leave
from mesh.node.escalation import JointInference, manifest_rules, rules_by_model
from mesh.node.http_face import NodeHttpFace, http_status
from mesh.node.membership import MeshMembership, SelfInfo
from mesh.node.model_store import ModelStore
from mesh.node.model_transfer import ModelTransfer, node_transfer
from mesh.node.routing import Fallback
from mesh.node.rpc_face import NodeRpcFace
from mesh.node.starting import (
    advert,
    announce,
    check_gateway,
    claim_addresses,
    scheduler_config,
    warn_if_open,
)
from mesh.node.work_sharing import WorkSharing
from mesh.rpc import RpcConnection, RpcServer
from mesh.runtime.runtime import Runtime
from mesh.service import Answer

__all__ = ["Node"]


log = logging.getLogger(__name__)


class Node:
    """A node serving the models of ``config`` over msgpack-RPC.

    ``runtime`` may be passed in (tests share one across nodes); by default
    the node loads its own from ``config.runtime`` and closes it on exit.
    """

    def __init__(self, config: NodeConfig, runtime: Runtime | None = None) -> None:
        self.config = config
        self.id = uuid.uuid4().hex[:12]
        # A restarted node keeps its name but gets a higher incarnation, so
        # peers see the same member come back rather than a stranger.
        self.incarnation = time.time_ns() // 1_000_000
        self.mesh_id = mesh_id(config.mesh_key)
        self.ready = asyncio.Event()
        self._runtime = runtime
        self._owns_runtime = runtime is None
        self._store: ModelStore | None = None
        self._transfer: ModelTransfer | None = None
        self._stop = asyncio.Event()
        self._drain = asyncio.Event()
        self._started = time.monotonic()
        self._server: RpcServer | None = None
        self._membership: MeshMembership | None = None
        self._work: WorkSharing | None = None
        self._fallback: Fallback | None = None
        self._joint: JointInference | None = None
        self._gateway: GatewayClient | None = None
        self._http: HttpServer | None = None
        self._counters = RequestCounters()
        # The RPC socket, then the HTTP one with --http-port: bound by run() first.
        self._listeners: list[socket.socket] = []

    # --- lifecycle -----------------------------------------------------------

    @property
    def port(self) -> int:
        """The RPC port the node listens on (known once :attr:`ready` is set)."""
        if self._server is None or self._server.bound_port is None:
            raise RuntimeError("the node is not listening yet")
        return self._server.bound_port

    @property
    def runtime(self) -> Runtime:
        """The model runtime (available once :attr:`ready` is set)."""
        if self._runtime is None:
            raise RuntimeError("the node has not loaded its models yet")
        return self._runtime

    @property
    def model_store(self) -> ModelStore:
        """The versions served and how they change (available once :attr:`ready` is set)."""
        if self._store is None:
            raise RuntimeError("the node has not loaded its models yet")
        return self._store

    @property
    def transfer(self) -> ModelTransfer:
        """Model transfer (pulls, pushes, chunk serving), once serving."""
        if self._transfer is None:
            raise RuntimeError("the node is not serving yet")
        return self._transfer

    def reload(self) -> None:
        """Rescan the model directories soon (as SIGHUP does); safe from a signal handler."""
        if self._store is not None:
            self._store.request_reload()

    @property
    def http_port(self) -> int | None:
        """The Open Inference Protocol port, when the node serves HTTP and listens."""
        return None if self._http is None else self._http.bound_port

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to shut down now; safe to call from a signal handler.

        What is in flight is dropped; during a drain this cuts it short.
        """
        self._stop.set()

    @property
    def draining(self) -> bool:
        """Whether :meth:`drain` was called."""
        return self._drain.is_set()

    def drain(self) -> None:
        """Ask :meth:`run` to drain, then return; safe to call from a signal handler.

        The node refuses new requests (Draining), gives what it holds for
        peers back, hands its queued work to peers that ask (and runs the
        rest), answers every request it owns, says goodbye (``leaving`` and
        mDNS) and returns, within ``config.drain_timeout_s``: past it, what
        it still owns is answered with Draining. See
        :mod:`mesh.core.scheduling.draining`.
        """
        self._drain.set()

    async def run(self) -> None:
        """Serve until :meth:`stop` is called or the task is cancelled.

        What can be checked is checked first, before the models load and
        before anyone hears of the node: its ports are bound (AddressInUse,
        AddressUnavailable, naming the flag) and its mDNS interfaces are
        this machine's. A name taken on the network shows only once mDNS
        probes for it: NameTaken, after the node has started.
        """
        self.config, self._listeners = claim_addresses(self.config)
        try:
            if self._runtime is None:
                # Loading verifies hashes and builds sessions: seconds of CPU on
                # a small device, so it runs off the event loop.
                self._runtime = await asyncio.to_thread(Runtime, self.config.runtime)
            self._store = ModelStore(
                self._runtime, interval_s=self.config.runtime.reload_interval_s
            )
            try:
                await self._serve()
            finally:
                if self._owns_runtime:
                    await self._runtime.aclose()
        finally:
            # The servers close what they adopted; this closes what they never did.
            for sock in self._listeners:
                sock.close()

    async def _serve(self) -> None:
        config = self.config
        warn_if_open(config, self._listeners[0].getsockname()[1])
        self._server = RpcServer(
            host=config.host,
            port=config.port,
            config=config.rpc,
            methods=NodeRpcFace(self).methods(),
            key=config.mesh_key,
            hello_info=self._hello_info,
            client_key=config.client_key,
        )
        port = await self._server.start(self._listeners[0])
        async with contextlib.AsyncExitStack() as stack:
            if config.gateway is not None:
                self._gateway = await stack.enter_async_context(GatewayClient(config.gateway))
            await self._serve_on(port)

    async def _serve_on(self, port: int) -> None:
        config = self.config
        assert self._server is not None
        work = self._work = WorkSharing(
            node_id=self.id,
            name=config.name,
            runtime=self.runtime,
            config=scheduler_config(config, self.runtime.threads),
            emulation=config.work.emulation,
            link=self._link,
        )
        self._fallback = Fallback(work, self._gateway, config.fallback)
        # Joint inference wraps routing: its second stage is routed like any request.
        self._joint = JointInference(
            rules_by_model(
                manifest_rules(config.runtime.model_dirs), config.escalation, self.runtime.specs()
            ),
            self._fallback.infer,
            default_deadline_ms=config.fallback.default_deadline_ms,
        )
        membership = self._membership = MeshMembership(
            me=SelfInfo(
                name=config.name,
                id=self.id,
                incarnation=self.incarnation,
                rpc_port=port,
                mesh_id=self.mesh_id,
            ),
            config=config.mesh,
            rpc=config.rpc,
            key=config.mesh_key,
            load=self._gossip_load,
            on_load=work.on_peer_load,
            on_gone=work.on_peer_gone,
            holding=work.holding,
            on_holding=work.on_peer_holding,
        )
        # Measured before anyone hears of us, so our first gossip already
        # tells peers how fast we are.
        await work.warm_up()
        async with asyncio.TaskGroup() as tasks:
            # Work sharing first: tasks start in order, so it is running
            # before the server can hand it a request.
            started = [tasks.create_task(work.run())]
            store = self.model_store
            store.attach(in_use=work.uses, on_change=work.models_changed)
            started.append(tasks.create_task(store.run()))
            self._transfer = node_transfer(self, store)
            started.append(tasks.create_task(self._transfer.run()))
            listening = asyncio.Event()
            started.append(tasks.create_task(self._server.serve(listening)))
            await listening.wait()
            if config.http.port is not None:
                self._http = HttpServer(
                    NodeHttpFace(self),
                    host=config.http_bind()[0],
                    config=config.http,
                    sock=self._listeners[1],
                    # One budget for bytes held, RPC and HTTP alike.
                    budget=self._server.budget,
                )
                http_listening = asyncio.Event()
                started.append(tasks.create_task(self._http.serve(http_listening)))
                await http_listening.wait()
            started.append(tasks.create_task(membership.run()))
            if config.mesh.mdns:
                discovery = MdnsDiscovery(
                    advert=advert(
                        config,
                        node_id=self.id,
                        mesh_id=self.mesh_id,
                        rpc_port=port,
                        http_port=self.http_port,
                    ),
                    interfaces=config.mesh.interfaces,
                    on_event=membership.on_discovery,
                )
                started.append(tasks.create_task(discovery.run()))
            self._announce(port)
            if self._gateway is not None:
                # Said, not waited for: a gateway that is down only costs
                # requests the mesh cannot serve (issue 20).
                started.append(tasks.create_task(check_gateway(self._gateway)))
            await self._until_asked()
            if self.draining and not self.stopping:
                await self._drain_then_leave(work)
            log.info("node %s stopping", config.name)
            for task in started:
                task.cancel()

    async def _until_asked(self) -> None:
        """Wait for :meth:`stop` or :meth:`drain`."""
        waits = [
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._drain.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _drain_then_leave(self, work: WorkSharing) -> None:
        assert self._server is not None
        await drain_and_leave(
            name=self.config.name,
            timeout_s=self.config.drain_timeout_s,
            work=work,
            server=self._server,
            requests_in_flight=lambda: self._counters.in_flight,
            stopping=lambda: self.stopping,
            membership=self._membership,
            leaving=Leaving(self.config.name, self.id, self.incarnation),
        )

    def _link(self, name: str) -> RpcConnection | None:
        return None if self._membership is None else self._membership.link(name)

    def _gossip_load(self) -> Load:
        """This node's load as peers need it: time, not queue length."""
        load = self._sharing.load()
        # A draining node runs nothing new: it stops being a holder of its
        # models, so peers neither route to it nor count on it.
        specs = () if self.draining else self.runtime.specs()
        return Load(
            models=tuple(ModelHolding(s.name, s.sha256, s.version) for s in specs),
            service_s=load.service_s,
            queued_s=load.queued_s,
            free_slots=0 if self.draining else load.free_slots,
            slots=load.slots,
            role="node",
        )

    @property
    def _sharing(self) -> WorkSharing:
        if self._work is None:
            raise RuntimeError("the node is not serving yet")
        return self._work

    def _announce(self, port: int) -> None:
        announce(
            self.config,
            node_id=self.id,
            mesh_id=self.mesh_id,
            port=port,
            http_port=self.http_port,
            models=self.runtime.names,
        )
        self.ready.set()

    # --- what the RPC face asks ------------------------------------------------

    @property
    def work(self) -> WorkSharing:
        """Work sharing (the scheduler's edge), once serving."""
        return self._sharing

    @property
    def membership(self) -> MeshMembership | None:
        """Membership (dialling peers, gossip), once serving."""
        return self._membership

    def refused(self, exc: MeshError) -> None:
        """Count a request that failed before it could be routed (malformed)."""
        self._counters.refused(exc)

    def drain_info(self) -> dict[str, Any]:
        """Begin a drain (:meth:`drain`) and say what it is about to wait for."""
        self.drain()
        return {
            "name": self.config.name,
            "draining": True,
            "drain_timeout_s": self.config.drain_timeout_s,
            "owned": 0 if self._work is None else self._work.scheduler.owned(),
        }

    def _hello_info(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "id": self.id,
            "version": __version__,
            "mesh_id": self.mesh_id,
            "role": "node",
        }

    def local_models(self) -> list[dict[str, Any]]:
        """This node's models with their signatures, as ``models()`` returns them."""
        return [spec.to_wire() for spec in self.runtime.specs()]

    async def mesh_models(self) -> dict[str, Any]:
        """Every model this node can route to, and where: here, a live peer, the gateway."""
        return await models_in_mesh(self.config.name, self.runtime, self._membership, self._gateway)

    def status(self) -> dict[str, Any]:
        """Identity, models, peers, counters and the scheduler's figures (``status()``)."""
        server = self._server
        return {
            **self._hello_info(),
            "models": list(self.runtime.names),
            "uptime_s": round(time.monotonic() - self._started, 3),
            "draining": self.draining,
            "incarnation": self.incarnation,
            "peers": [] if self._membership is None else self._membership.peers_status(),
            "membership": {} if self._membership is None else self._membership.stats(),
            "auth": self.config.mesh_key is not None,
            "rpc": {
                "host": self.config.host,
                "port": None if server is None else server.bound_port,
                "connections": 0 if server is None else server.connections,
                **({} if server is None else server.exposure_status()),
            },
            "http": http_status(self.config, self.http_port),
            "gateway": None if self._gateway is None else self._gateway.status(),
            "routing": {} if self._fallback is None else self._fallback.status(),
            "escalation": {} if self._joint is None else self._joint.status(),
            "counters": self._counters.to_status(
                Counter() if self._work is None else self._work.scheduler.counters,
                Counter() if self._fallback is None else self._fallback.counters,
            ),
            "scheduler": {} if self._work is None else self._work.status(),
            "emulation": None
            if self.config.work.emulation is None
            else self.config.work.emulation.to_status(),
            "steal_activity": {} if self._work is None else self._work.scheduler.peer_activity(),
            "transfer": {} if self._transfer is None else self._transfer.status(),
            "model_store": {} if self._store is None else self._store.status(),
        }

    # --- what both front ends (RPC and HTTP) serve -------------------------------

    async def infer(self, request: InferRequest) -> Answer:
        """Route ``request`` (mesh or gateway) and count it; RPC and HTTP both come here."""
        if self._joint is None:
            raise RuntimeError("the node is not serving yet")
        if self.draining:
            # Counted like any failure, but before routing: not even the
            # gateway gets a request a leaving node was sent.
            exc = refused(self.config.name)
            self._counters.refused(exc)
            raise exc
        if self._transfer is not None:
            self._transfer.asked_for(request.model)  # --fetch-models
        with self._counters.routing():
            return await self._joint.infer(request)

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """V2 metadata of ``name``: ours, else a peer's that runs it, else the gateway's."""
        return await metadata_in_mesh(
            name,
            self.runtime,
            holders=self._sharing.scheduler.holders(name),
            link=self._link,
            gateway=self._gateway,
            versions=self._sharing.versions.labels(name),
        )
