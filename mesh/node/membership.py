"""The membership driver: connections to peers, gossip rounds, and the clock.

The rules (who is alive, suspect or dead) live in :mod:`mesh.core.membership.peers`;
this module only does the I/O around them:

* It dials every peer it learns of (mDNS, ``--peer`` bootstrap addresses,
  and addresses other peers gossip about). A peer counts only once the
  mesh-key handshake has passed and its hello shows our mesh id; anything
  else is logged once and never used.
* Every ``gossip_interval_s`` it sends each connected peer a ``gossip``
  notification over its own outgoing connection: its identity, its load,
  and its view of the other members. Gossip arrives on the connections
  peers opened to us and is checked field by field before it counts.
* A dropped connection makes the peer suspect at once, so a killed process
  is declared dead within ``dead_after_s``; a silent one (a pulled cable)
  within ``suspect_after_s + dead_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.config import MeshConfig, RpcConfig
from mesh.core.membership.gossip import Holding, MemberState
from mesh.core.membership.leaving import parse_leaving
from mesh.core.membership.peers import (
    AddressLearned,
    Event,
    Gossip,
    Load,
    MemberDied,
    MemberForgotten,
    MemberJoined,
    MemberRefuted,
    MemberRestarted,
    Membership,
    MembershipConfig,
    MemberSuspected,
    parse_gossip,
)
from mesh.core.wire.addresses import format_address, parse_address
from mesh.core.wire.auth import NODE
from mesh.core.wire.framing import encode_notification
from mesh.errors import AuthError, MeshError
from mesh.log_once import WarnOnce
from mesh.mdns import DiscoveryEvent, PeerGone
from mesh.rpc import RpcClient, RpcConnection

__all__ = ["GOSSIP", "MeshMembership", "SelfInfo"]

log = logging.getLogger(__name__)

GOSSIP = "gossip"
# Waits between attempts to reach a peer: quick at first (a restart takes a
# moment), then slower so a dead address costs little.
_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
# An address learned from mDNS or gossip (not a bootstrap peer) that stays
# unreachable this long is dropped, unless mDNS still advertises it or the
# member behind it is still remembered: a partition can outlast any timeout,
# and the mesh must heal when the cable comes back.
_GIVE_UP_S = 10.0
# A peer refused for a wrong key or another mesh is tried again this rarely.
_REFUSED_RETRY_S = 30.0


@dataclass(frozen=True)
class SelfInfo:
    """Who this node is, as it tells its peers."""

    name: str
    id: str
    incarnation: int
    rpc_port: int
    mesh_id: str
    http_port: int | None = None
    role: str = "node"


class MeshMembership:
    """Keeps this node's view of the mesh current; run it inside the node's TaskGroup."""

    def __init__(
        self,
        *,
        me: SelfInfo,
        config: MeshConfig,
        rpc: RpcConfig,
        key: bytes | None,
        load: Callable[[], Load],
        on_load: Callable[[str, Load], None] | None = None,
        on_gone: Callable[[str], None] | None = None,
        holding: Callable[[], Holding] | None = None,
        on_holding: Callable[[str, Holding], None] | None = None,
    ) -> None:
        """``on_load(name, load)`` hears each peer's gossiped load; ``on_gone(name)``
        hears of a peer that died or restarted (what it held is lost).
        ``holding()`` is what this node holds for others, told in its gossip;
        ``on_holding(name, holding)`` hears what a live peer says it holds."""
        self.me = me
        self._config = config
        self._rpc = RpcConfig(
            max_message_bytes=rpc.max_message_bytes,
            call_timeout_s=config.connect_timeout_s * 2,
            connect_timeout_s=config.connect_timeout_s,
        )
        self._key = key
        self._load = load
        self._on_load = on_load
        self._on_gone = on_gone
        self._holding = holding
        self._on_holding = on_holding
        self._view = Membership(
            self_name=me.name,
            self_id=me.id,
            config=MembershipConfig(
                suspect_after_s=config.suspect_after_s,
                dead_after_s=config.dead_after_s,
                forget_after_s=config.forget_after_s,
            ),
        )
        self._links: dict[str, RpcClient] = {}
        self._dialing: set[tuple[str, int]] = set()
        # Addresses mDNS currently advertises, by node name.
        self._advertised: dict[str, tuple[str, int]] = {}
        # The member last reached at each address.
        self._names: dict[tuple[str, int], str] = {}
        self._refused_until: dict[tuple[str, int], float] = {}
        self._warn_once = WarnOnce(log)
        self._tasks: asyncio.TaskGroup | None = None
        self.gossip_sent = 0
        # Bytes sent on links that have closed; live links count their own.
        self._closed_links_bytes = 0
        # Connections peers opened to us, by member name, with the process id
        # their gossip gave: any message on them is a sign of life.
        self._accepted: dict[str, dict[RpcConnection, str]] = {}
        # A dialer waiting out its back-off wakes when its event is set.
        self._pokes: dict[tuple[str, int], asyncio.Event] = {}

    # --- what the node wires in -----------------------------------------------

    @property
    def view(self) -> Membership:
        """The membership table (read-only use, please)."""
        return self._view

    @property
    def gossip_bytes_sent(self) -> int:
        """Bytes this node has sent to peers over its own links (gossip and handshakes)."""
        live = sum(client.connection.bytes_sent for client in self._links.values())
        return self._closed_links_bytes + live

    def link(self, name: str) -> RpcConnection | None:
        """Our open connection to peer ``name``, for calls and notifications; None if none."""
        client = self._links.get(name)
        if client is None or client.closed:
            return None
        return client.connection

    def stats(self) -> dict[str, Any]:
        """Figures for ``status()``: links, gossip sent."""
        return {
            "links": len(self._links),
            "gossip_sent": self.gossip_sent,
            "gossip_bytes_sent": self.gossip_bytes_sent,
        }

    def peers_status(self) -> list[dict[str, Any]]:
        """Every known member, for ``status()``."""
        now = self._now()
        return [
            {**member.to_status(now), "connected": member.name in self._links}
            for member in self._view.members()
        ]

    def on_discovery(self, event: DiscoveryEvent) -> None:
        """Take a peer found (or lost) by mDNS."""
        if isinstance(event, PeerGone):
            # Stop redialing it; the connection drop or the silence tells us
            # whether it is really gone.
            self._advertised.pop(event.name, None)
            return
        advert = event.advert
        if advert.mesh_id != self.me.mesh_id:
            self._warn_once(
                f"mesh:{advert.name}",
                "ignoring %s: it belongs to mesh %s, we are %s",
                advert.name,
                advert.mesh_id,
                self.me.mesh_id,
            )
            return
        if not advert.addresses:
            return
        self._advertised[advert.name] = (advert.addresses[0], advert.rpc_port)
        self._want(advert.addresses[0], advert.rpc_port, static=False)

    async def run(self) -> None:
        """Dial peers and gossip until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            for address in self._config.peers:
                host, port = parse_address(address)
                self._want(host, port, static=True)
            interval = self._config.gossip_interval_s
            next_round = self._now() + interval
            try:
                while True:
                    # Wake for the next gossip round, or sooner when a peer's
                    # suspicion or death falls due, so detection is not rounded
                    # up to the gossip interval.
                    deadline = self._view.next_deadline()
                    wake = next_round if deadline is None else min(next_round, deadline)
                    # (At least 10 ms: never a busy loop, whatever the table says.)
                    await asyncio.sleep(max(0.01, wake - self._now()))
                    now = self._now()
                    if now >= next_round:
                        self._gossip_round()
                        next_round = max(next_round + interval, now)
                    else:
                        self._pulse(now)
                        self._handle(self._view.tick(now))
            finally:
                for client in list(self._links.values()):
                    client.connection.abort()

    # --- gossip -----------------------------------------------------------------

    def _gossip_round(self) -> None:
        now = self._now()
        self._pulse(now)
        self._handle(self._view.tick(now))
        for name, (host, port) in list(self._advertised.items()):
            if name not in self._links:
                self._want(host, port, static=False)
        self._send_gossip(list(self._links.values()), now)

    def _send_gossip(self, clients: list[RpcClient], now: float) -> None:
        me = self.me
        payload = Gossip(
            name=me.name,
            id=me.id,
            incarnation=me.incarnation,
            host=None,
            rpc_port=me.rpc_port,
            http_port=me.http_port,
            mesh_id=me.mesh_id,
            load=self._load(),
            members=self._view.digest(now),
            holding=None if self._holding is None else self._holding(),
        ).to_wire()
        # Encoded once for every peer: the same bytes go to all of them.
        data = encode_notification(GOSSIP, [payload], limit=self._rpc.max_message_bytes)
        for client in clients:
            if client.closed:
                continue
            try:
                client.connection.send_encoded(data)
            except MeshError:
                continue  # the connection is going; its dialer sees to it
            self.gossip_sent += 1

    def on_gossip(self, connection: RpcConnection, params: list[Any]) -> None:
        """Take a ``gossip`` notification that arrived on an accepted connection."""
        try:
            gossip = parse_gossip(params)
        except MeshError as exc:
            self._warn_once(
                f"gossip:{connection.peer}", "bad gossip from %s: %s", connection.peer, exc.message
            )
            return
        if connection.peer_name and gossip.name != connection.peer_name:
            # A node speaks for itself only: its handshake named it.
            self._warn_once(
                f"gossip-name:{connection.peer}",
                "ignoring gossip from %s: it says it is %s but its handshake named it %s",
                connection.peer,
                gossip.name,
                connection.peer_name,
            )
            return
        if gossip.mesh_id != self.me.mesh_id:
            self._warn_once(
                f"mesh:{gossip.name}",
                "ignoring gossip from %s: mesh %s is not ours (%s)",
                gossip.name,
                gossip.mesh_id,
                self.me.mesh_id,
            )
            return
        host = gossip.host or connection.peer_host
        if host is None:
            return  # not a TCP peer: nothing to dial back
        self._handle(self._view.heard_from(gossip, peer_host=host, now=self._now()))
        if gossip.name == self.me.name:
            return
        member = self._view.get(gossip.name)
        if member is not None and member.state is MemberState.ALIVE and member.id == gossip.id:
            self._accepted.setdefault(gossip.name, {})[connection] = gossip.id
            if self._on_load is not None:
                self._on_load(gossip.name, gossip.load)
            if self._on_holding is not None and gossip.holding is not None:
                self._on_holding(gossip.name, gossip.holding)
        if gossip.name not in self._links:
            # It reached us: make sure our gossip reaches it too, now, not
            # when our dialer's back-off from the partition runs out.
            self._want(host, gossip.rpc_port, static=False, poke=True)

    def _pulse(self, now: float) -> None:
        """Tell the table of every peer that sent us anything since it last heard."""
        loop_now = asyncio.get_running_loop().time()
        for name in sorted({*self._accepted, *self._links}):
            sources = self._accepted.get(name, {})
            for connection in [c for c in sources if c.closed]:
                del sources[connection]
            if not sources:
                self._accepted.pop(name, None)
            heard = [(c.last_received, id_) for c, id_ in sources.items()]
            link = self._links.get(name)
            if link is not None and not link.closed:
                heard.append((link.connection.last_received, str(link.hello.get("id"))))
            for last, id_ in heard:
                if last > float("-inf"):
                    # Connections keep loop time; the table keeps ours.
                    at = now - max(0.0, loop_now - last)
                    self._handle(self._view.heard(name, id_, at=at, now=now))

    def on_leaving(self, connection: RpcConnection, params: list[Any]) -> None:
        """Take a ``leaving`` notification: a drained peer is gone now, not suspect."""
        try:
            leaving = parse_leaving(params)
        except MeshError as exc:
            self._warn_once(
                f"leaving:{connection.peer}",
                "bad leaving from %s: %s",
                connection.peer,
                exc.message,
            )
            return
        self._handle(
            self._view.left(leaving.name, leaving.id, leaving.incarnation, now=self._now())
        )

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, AddressLearned):
                self._want(event.host, event.rpc_port, static=False)
            elif isinstance(event, MemberJoined):
                log.info("peer %s %s", event.name, "rejoined" if event.rejoined else "joined")
            elif isinstance(event, MemberRestarted):
                log.info("peer %s restarted (incarnation %d)", event.name, event.new_incarnation)
                self._gone(event.name)
            elif isinstance(event, MemberSuspected):
                log.info("peer %s is suspect: %s", event.name, event.reason)
            elif isinstance(event, MemberRefuted):
                log.info("peer %s is alive after all", event.name)
            elif isinstance(event, MemberDied):
                log.warning("peer %s is dead: %s", event.name, event.reason)
                link = self._links.get(event.name)
                if link is not None:
                    # Drop the link: what it still carries is stale by now, and
                    # must not arrive as fresh news when a partition heals. Its
                    # dialer reconnects once the peer can be reached again.
                    link.connection.abort()
                # And the connections it opened to us: its gossip sent into
                # the partition is retransmitted by its kernel once the cable
                # is back, and would revive it for a moment as if it spoke now
                # (then kill it again 1.4 s later). Closed, they take nothing.
                for connection in self._accepted.pop(event.name, {}):
                    connection.abort()
                self._gone(event.name)
            elif isinstance(event, MemberForgotten):
                log.info("peer %s forgotten", event.name)

    # --- connections ------------------------------------------------------------

    def _want(self, host: str, port: int, *, static: bool, poke: bool = False) -> None:
        """Dial ``host:port`` unless a dialer is at it; ``poke`` cuts that
        dialer's back-off short (the peer has just reached us)."""
        address = (host, port)
        if address in self._dialing:
            if poke and address in self._pokes:
                self._pokes[address].set()
            return
        if self._tasks is None:
            return
        if self._refused_until.get(address, 0.0) > self._now():
            return
        self._dialing.add(address)
        self._tasks.create_task(self._dial(host, port, static=static))

    async def _dial(self, host: str, port: int, *, static: bool) -> None:
        address = (host, port)
        where = format_address(host, port)
        attempt = 0
        failing_since: float | None = None
        poke = self._pokes[address] = asyncio.Event()
        try:
            while True:
                name = await self._connect_once(host, port, where)
                if name is None:
                    now = self._now()
                    failing_since = failing_since or now
                    if address in self._refused_until or (
                        not static
                        and now - failing_since > _GIVE_UP_S
                        and not self._still_wanted(address)
                    ):
                        return
                    poke.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]):
                            await poke.wait()
                    # Poked: the peer just reached us, so try again from the start.
                    attempt = 0 if poke.is_set() else attempt + 1
                    continue
                if name == "":
                    return  # ourselves, or a duplicate link
                attempt, failing_since = 0, None
        finally:
            self._dialing.discard(address)
            self._pokes.pop(address, None)

    def _still_wanted(self, address: tuple[str, int]) -> bool:
        """Whether mDNS still advertises ``address`` or its member is remembered."""
        if address in self._advertised.values():
            return True
        name = self._names.get(address)
        return name is not None and self._view.get(name) is not None

    async def _connect_once(self, host: str, port: int, where: str) -> str | None:
        """One connection's life: its name when it ended, None if it never came up, "" to stop."""
        # Our own links say we are a node (by name): peers' methods need it.
        client = RpcClient(
            host, port, config=self._rpc, key=self._key, role=NODE, name=self.me.name
        )
        try:
            await client.connect()
        except AuthError as exc:
            self._refused_until[(host, port)] = self._now() + _REFUSED_RETRY_S
            self._warn_once(f"auth:{where}", "refused peer %s: %s", where, exc.message)
            return None
        except MeshError as exc:
            self._warn_once(f"dial:{where}", "cannot reach peer %s: %s", where, exc.message)
            return None
        hello = client.hello
        name, mesh = hello.get("name"), hello.get("mesh_id")
        if not isinstance(name, str) or not name or mesh != self.me.mesh_id:
            self._refused_until[(host, port)] = self._now() + _REFUSED_RETRY_S
            self._warn_once(
                f"hello:{where}", "not using %s: it is %r of mesh %r", where, name, mesh
            )
            await client.aclose()
            return None
        if name == self.me.name or name in self._links:
            if name == self.me.name and hello.get("id") != self.me.id:
                self._warn_once(
                    f"collision:{where}", "%s uses our name %r; give it another --name", where, name
                )
            await client.aclose()
            return ""
        self._warn_once.forget(f"dial:{where}")
        self._names[(host, port)] = name
        self._links[name] = client
        # Gossip at once on a new link: a peer back from a partition hears
        # from us (and what we hold for it) now, not a round later.
        self._send_gossip([client], self._now())
        try:
            await client.connection.wait_closed()
        finally:
            del self._links[name]
            self._closed_links_bytes += client.connection.bytes_sent
            self._handle(self._view.connection_lost(name, now=self._now()))
            await client.aclose()
        return name

    # --- helpers ------------------------------------------------------------------

    def _gone(self, name: str) -> None:
        if self._on_gone is not None:
            self._on_gone(name)

    @staticmethod
    def _now() -> float:
        return time.monotonic()
