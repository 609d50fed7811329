"""The settings themselves: frozen dataclasses with the defaults a device needs.

Built by :mod:`mesh.config.loading` from flags, ``EDGEMESH_*`` variables and
TOML; tests and embedders may build them directly.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

# Defined beside the rules that use them, so that mesh.core imports nothing from here.
from mesh.core.policy.breaker import BreakerConfig as BreakerConfig
from mesh.core.policy.escalation import EscalationRule
from mesh.core.wire.framing import DEFAULT_MAX_MESSAGE_BYTES as DEFAULT_MAX_MESSAGE_BYTES


def bundled_models_dir() -> Path:
    """The directory holding the models that ship with edgemesh.

    In a wheel they live inside the package (``mesh/_models``); in a source
    checkout (including an editable install) they are the repository's
    ``models/`` directory.
    """
    package_dir = Path(__file__).resolve().parent.parent
    inside = package_dir / "_models"
    if inside.is_dir():
        return inside
    return package_dir.parent / "models"


@dataclass(frozen=True)
class RuntimeConfig:
    """How models are found and run."""

    model_dirs: tuple[Path, ...] = field(default_factory=lambda: (bundled_models_dir(),))
    # Serve only these model names; None serves every model found.
    model_names: tuple[str, ...] | None = None
    # onnxruntime threads per inference call. One keeps a busy node from
    # oversubscribing small devices; parallelism comes from concurrent calls.
    intra_op_threads: int = 1
    # Calls of one model running at the same time on this node.
    per_model_concurrency: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # Worker threads shared by all models.
    executor_threads: int = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # A node rescans its model directories this often, in seconds, and serves
    # what changed (hot reload); 0 rescans only on SIGHUP or `reload`.
    reload_interval_s: float = 2.0
    # Where models pulled from peers or pushed by a client are written (as
    # NAME/VERSION/model.onnx) and served from; it is also scanned like any
    # model directory. None: the first model directory, unless that is the
    # bundled one, which edgemesh never writes into (it may be inside the
    # installed package): such a node refuses pulls and pushes until told.
    store_dir: Path | None = None


@dataclass(frozen=True)
class RpcConfig:
    """Limits and timeouts of msgpack-RPC connections."""

    # Largest single message accepted or sent.
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Requests being worked on for one connection at once; more are refused
    # with Overloaded rather than queued without bound.
    max_in_flight_per_connection: int = 1024
    # Default time a client waits for an answer to one call.
    call_timeout_s: float = 30.0
    # Time to open a connection and finish the handshake.
    connect_timeout_s: float = 5.0
    # --- what a server lets a connection hold before it proves the mesh key
    # (none of these apply to an open node, which trusts everyone):
    # bytes it may send ahead of the handshake, and the time it has to finish it.
    preauth_max_bytes: int = 8192
    handshake_timeout_s: float = 5.0
    # Connections waiting for their handshake: in all, and from one address.
    max_unauthenticated: int = 256
    max_unauthenticated_per_source: int = 32
    # Failed handshakes one address may make in a burst, then per second.
    auth_failure_burst: int = 10
    auth_failures_per_s: float = 1.0
    # --- for every accepted connection: one that sends nothing for this long
    # is closed, and so is one whose message is not complete within the second.
    idle_timeout_s: float = 600.0
    message_timeout_s: float = 120.0
    # Bytes of received, unanswered requests and unfinished messages a server
    # holds over all its connections; past it a request is refused with
    # Overloaded (its connection closed when the message is still arriving).
    max_bytes_in_flight: int = 4 * DEFAULT_MAX_MESSAGE_BYTES
    # With a key, seal every frame after the handshake with an AEAD
    # (mesh.core.wire.sealing); False keeps links authenticated but plain.
    seal: bool = True


DEFAULT_RPC_PORT = 7700
# How long a node or gateway that was asked to stop may take to drain.
DEFAULT_DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MeshConfig:
    """How a node finds its peers and watches them."""

    # Find peers on the LAN with mDNS. Off where multicast is blocked (Wi-Fi
    # client isolation, VLANs, containers); then use bootstrap peers.
    mdns: bool = True
    # Interfaces (their IP addresses) mDNS binds to and advertises; None means
    # all of them, the default for a real device. Loaded settings without
    # `interface` follow `host` (mesh.core.wire.addresses.mdns_interfaces):
    # a node bound to 127.0.0.1 runs mDNS there, so a local mesh stays local.
    interfaces: tuple[str, ...] | None = None
    # Bootstrap peers, "HOST:PORT". One is enough: peers share what they know.
    peers: tuple[str, ...] = ()
    # How often each node tells every peer it is alive, and how loaded.
    gossip_interval_s: float = 0.2
    # Silence before a peer is suspected, then suspicion before it is dead.
    # A SIGKILLed peer's connection drops at once and skips the first wait.
    suspect_after_s: float = 0.8
    dead_after_s: float = 0.6
    # Dead peers are forgotten after this, so none lingers as a ghost.
    forget_after_s: float = 30.0
    # Connecting to a peer and finishing the handshake; a peer that accepts
    # the connection and then says nothing is given up on after this.
    connect_timeout_s: float = 2.0


@dataclass(frozen=True)
class Emulation:
    """Make a node behave like a device ``speed`` times as fast as the reference.

    The real model runs and its real outputs are returned; the call is then
    padded to ``service_ms / speed``. For experiments and demos only: two
    cores cannot show a mesh of sixteen devices any other way.
    """

    speed: float = 1.0
    # The reference device's service time for one call.
    service_ms: float = 20.0

    @property
    def service_s(self) -> float:
        return self.service_ms / self.speed / 1000

    def to_status(self) -> dict[str, float]:
        return {"speed": self.speed, "service_ms": self.service_ms}


@dataclass(frozen=True)
class WorkConfig:
    """How a node shares work with its peers."""

    # Requests run at once on this node; None means one per executor thread.
    slots: int | None = None
    # Take queued work from loaded peers, and let idle ones take ours.
    steal: bool = True
    # Pretend to be a device of another speed (off unless asked for).
    emulation: Emulation | None = None


@dataclass(frozen=True)
class HttpConfig:
    """The Open Inference Protocol (V2 REST) endpoint of a node or the gateway."""

    # None serves no HTTP (a node's default); 0 picks a free port.
    port: int | None = None
    # Largest request body accepted; a bigger one is refused with 413.
    max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Largest JSON part of a request (the whole body without the binary tensor
    # extension): JSON is parsed on the event loop, and a bigger document
    # would stall the node's gossip (mesh.http.limits). 413 past it.
    max_json_bytes: int = 1024 * 1024
    # A connection that sends no complete request headers for this long
    # (slow headers, or idle between requests) is closed. Longer than the 15 s
    # aiohttp's client keeps an idle connection, so that a client never sends
    # on a connection the server is closing.
    idle_timeout_s: float = 30.0
    # A request body must arrive within this; 408 and a closed connection else.
    body_timeout_s: float = 30.0
    # Bytes of request bodies held at once, over all connections, until each
    # request is answered; past it 503 Overloaded.
    max_bytes_in_flight: int = 4 * DEFAULT_MAX_MESSAGE_BYTES
    # The address to listen on; None: the node's or gateway's own host (for a
    # node, see NodeConfig.http_bind: a keyed node without a token stays local).
    host: str | None = None
    # A bearer token every request must carry (all but /v2/health/live);
    # None checks nothing.
    token: str | None = field(default=None, repr=False)
    # Serve HTTPS with this PEM certificate chain and private key; None: plain HTTP.
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class GatewayClientConfig:
    """How a node reaches its cloud gateway (any Open Inference Protocol server)."""

    url: str
    # A request without a deadline waits at most this long for the gateway.
    timeout_s: float = 30.0
    # Requests sent to the gateway at once; beyond this a request that
    # needs the gateway is refused with Overloaded instead of piling up.
    max_in_flight: int = 256
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    # Sent as "Authorization: Bearer <token>" with every request; None sends none.
    token: str | None = field(default=None, repr=False)
    # For https:// URLs: trust only the certificates this PEM file vouches
    # for; None trusts the system's CAs.
    ca_file: Path | None = None


@dataclass(frozen=True)
class FallbackConfig:
    """When a node sends a request to the gateway instead of the mesh."""

    # With a gateway, a request that gives no deadline must be one the mesh
    # can finish within this, or it goes to the gateway. It is not dropped
    # when this passes (only a deadline the client gave expires), and with no
    # gateway it is not looked at: such a request queues, up to queue_cap.
    default_deadline_ms: float = 2000.0
    # Requests queued on this node (its own and others') at most; a request
    # arriving at a full queue goes to the gateway, or is refused.
    queue_cap: int = 1024


@dataclass(frozen=True)
class NodeConfig:
    """Everything one ``edgemesh node`` needs."""

    name: str = field(default_factory=socket.gethostname)
    # True when no name was given: ``name`` is then the hostname on the
    # default port, else hostname-PORT (see mesh.core.wire.addresses.
    # default_node_name), the node says so as it starts, and with port 0
    # it adds the port it bound to the hostname held here.
    name_from_host: bool = False
    # All interfaces by default: a mesh node exists to be reached from the LAN.
    host: str = "0.0.0.0"
    port: int = DEFAULT_RPC_PORT
    # The shared secret of the mesh; None runs an open node.
    mesh_key: bytes | None = field(default=None, repr=False)
    # A second key for clients only (--client-key-file): its holders may
    # infer, list models and read status, never join the mesh.
    client_key: bytes | None = field(default=None, repr=False)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    rpc: RpcConfig = field(default_factory=RpcConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    work: WorkConfig = field(default_factory=WorkConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    # The cloud gateway; None keeps every request in the mesh.
    gateway: GatewayClientConfig | None = None
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    # Joint inference rules, one per model; each replaces its manifest's.
    escalation: tuple[EscalationRule, ...] = ()
    # Written as JSON once the node listens, for scripts and supervisors.
    ready_file: Path | None = None
    log_level: str = "info"
    log_format: str = "text"
    # On SIGTERM/SIGINT or `edgemesh drain`: how long the node may take to
    # finish, hand off and answer what it holds before it exits anyway.
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    # Asked for a model it lacks and a live peer serves, the node pulls a
    # copy in the background (the request itself is routed as always).
    fetch_models: bool = False

    def http_reachable(self) -> bool:
        """Whether a device that reaches the RPC port can reach the HTTP API too.

        False when the HTTP API listens on loopback and the RPC port does
        not: the node then advertises no HTTP port, rather than one that
        every other device would find closed.
        """
        return _is_loopback(self.host) or not _is_loopback(self.http_bind()[0])

    def http_bind(self) -> tuple[str, str | None]:
        """Where the HTTP API listens, and, when that is loopback on our own
        decision, a line for the log saying why.

        A keyed node whose HTTP API checks no token would be an open door
        into a closed mesh, so it listens on 127.0.0.1 unless ``http.host``
        says otherwise.
        """
        if self.http.host is not None:
            return self.http.host, None
        if self.mesh_key is None or self.http.token is not None or _is_loopback(self.host):
            return self.host, None
        return "127.0.0.1", (
            "the HTTP API listens on 127.0.0.1 only: this node has a mesh key and its "
            "HTTP API no token; give --http-token-file to open it to the network, "
            "or --http-host to choose its address"
        )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


DEFAULT_GATEWAY_PORT = 8000


@dataclass(frozen=True)
class GatewayServerConfig:
    """Everything one ``edgemesh gateway`` needs.

    Without ``upstream`` the gateway runs the models of ``runtime`` itself;
    with it, it forwards every request to that Open Inference Protocol server
    (Triton, KServe, MLServer) and loads no models.
    """

    name: str = "gateway"
    # All interfaces by default: a cloud gateway exists to be reached.
    host: str = "0.0.0.0"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    http: HttpConfig = field(default_factory=lambda: HttpConfig(port=DEFAULT_GATEWAY_PORT))
    upstream: GatewayClientConfig | None = None
    # Requests run at once; None means one per executor thread.
    slots: int | None = None
    # Requests waiting for a slot at most; one more is refused with 503.
    queue_cap: int = 1024
    # Pad every call to a known service time (benchmarks); None runs at full speed.
    emulation: Emulation | None = None
    # Written as JSON ({name, host, http_port}) once the gateway listens.
    ready_file: Path | None = None
    log_level: str = "info"
    log_format: str = "text"
    # On SIGTERM/SIGINT: how long requests in flight may take before it exits anyway.
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S

    @property
    def open_to_network(self) -> bool:
        """Whether anyone who can reach its address may run its models (no token, not loopback)."""
        return self.http.token is None and not _is_loopback(self.host)
