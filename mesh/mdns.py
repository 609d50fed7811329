"""mDNS discovery: register this node, browse for the others, report who comes and goes.

:class:`MdnsDiscovery` is the thin asyncio edge around python-zeroconf. It
announces our :class:`~mesh.core.membership.adverts.Advert` as a ``_edgemesh._tcp``
service, browses for the others, and turns what it hears into two events:
:class:`PeerSeen` (a valid peer appeared or changed its record) and
:class:`PeerGone` (its record was withdrawn). It never decides who is a
member: an advert is an unauthenticated hint, and membership admits a peer
only after the RPC handshake.

Anything on the LAN can send mDNS records, so each record is checked by
:func:`~mesh.core.membership.adverts.parse_advert`; a broken, forged or colliding one
is logged once per instance name and otherwise ignored. One bad record
never stops discovery of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import ifaddr
from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh.core.membership.adverts import (
    SERVICE_TYPE,
    Advert,
    encode_txt,
    instance_name,
    parse_advert,
)
from mesh.core.wire.addresses import Network, host_ip, network_of, on_networks
from mesh.errors import AddressUnavailable, ConfigError, NameTaken, ProtocolError
from mesh.log_once import WarnOnce

__all__ = [
    "DiscoveryEvent",
    "MdnsDiscovery",
    "PeerGone",
    "PeerSeen",
    "check_interfaces",
    "check_own_addresses",
    "hear_only_joined_groups",
    "interface_networks",
    "open_zeroconf",
    "resolve_advert",
]

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT: Final = 1.0
# Goodbye packets go out three times, 125 ms apart; leave room for that and no more,
# so a node that is shutting down is never held up by the network.
GOODBYE_TIMEOUT: Final = 1.0
# Linux's IP_MULTICAST_ALL / IPV6_MULTICAST_ALL (linux/in.h, linux/in6.h); Python
# does not export them.
_IP_MULTICAST_ALL: Final = 49
_IPV6_MULTICAST_ALL: Final = 29


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """A valid peer record appeared, or its contents changed."""

    advert: Advert


@dataclass(frozen=True, slots=True)
class PeerGone:
    """The peer called ``name`` withdrew its record (or its record expired)."""

    name: str


DiscoveryEvent: TypeAlias = PeerSeen | PeerGone


class MdnsDiscovery:
    """Registers ``advert`` over mDNS and reports other nodes to ``on_event``.

    ``interfaces`` lists the IP addresses to use; None means every
    interface, the right default on a real device. Tests and local demos
    pass ``["127.0.0.1"]`` so that nothing leaves the machine.

    ``on_event`` is called on the event loop, once per change; an exception
    it raises ends :meth:`run`, since it is a bug in the caller.
    """

    def __init__(
        self,
        *,
        advert: Advert,
        interfaces: Sequence[str] | None,
        on_event: Callable[[DiscoveryEvent], None],
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self._txt = encode_txt(advert)
        self._advert = advert
        self._interfaces = None if interfaces is None else check_interfaces(interfaces)
        self._networks = None if self._interfaces is None else interface_networks(self._interfaces)
        self._on_event = on_event
        self._resolve_timeout = resolve_timeout
        self._tasks: asyncio.TaskGroup | None = None
        # Pending resolutions by full instance name: a newer change replaces an older one.
        self._resolving: dict[str, asyncio.Task[None]] = {}
        # The last advert reported as PeerSeen, by full instance name.
        self._seen: dict[str, Advert] = {}
        # Each instance name we complained about is logged once per kind of complaint.
        self._warn_once = WarnOnce(log)
        # Another node answered for our name while we were still probing for it.
        self._name_claimed = asyncio.Event()
        self._registered = False

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Announce, browse and report until cancelled; then say goodbye.

        ``ready`` is set once our service is registered and browsing has
        started. Raises ConfigError if the interfaces cannot be used or
        another node on the network already holds our name.
        """
        zc = open_zeroconf(self._interfaces)
        try:
            await zc.zeroconf.async_wait_for_start()
            if self._interfaces is not None:
                hear_only_joined_groups(zc.zeroconf)
            info = self._service_info()
            registered = False
            name_taken: ConfigError | None = None
            try:
                async with asyncio.TaskGroup() as tasks:
                    self._tasks = tasks
                    # Browse first: probing for our name takes most of a second
                    # (RFC 6762), and the peers found meanwhile can be dialled at
                    # once; they learn of us from our gossip, not our record.
                    browser = AsyncServiceBrowser(
                        zc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change]
                    )
                    try:
                        try:
                            announced = await self._register(zc, info)
                        except ConfigError as exc:
                            # Kept out of the task group, so the caller gets a
                            # plain ConfigError rather than an ExceptionGroup.
                            name_taken = exc
                        else:
                            registered = True
                            # Held in our group: cancelled with us, never sent
                            # after the goodbye.
                            tasks.create_task(_wait_for(announced))
                            if ready is not None:
                                ready.set()
                            await asyncio.Event().wait()
                    finally:
                        # Stop reacting first: the group is closing and takes no new tasks.
                        self._tasks = None
                        await browser.async_cancel()
            finally:
                if registered:
                    await self._unregister(zc, info)
            if name_taken is not None:
                raise name_taken
        finally:
            await zc.async_close()

    def _service_info(self) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            instance_name(self._advert.name),
            port=self._advert.rpc_port,
            properties=self._txt,
            parsed_addresses=self._addresses(),
        )

    async def _register(self, zc: AsyncZeroconf, info: AsyncServiceInfo) -> Awaitable[object]:
        """Probe for our name, then start announcing; returns the announcement's awaitable."""
        taken = NameTaken(
            f"the node name {self._advert.name!r} is already taken on this network "
            "(another node answered for it); choose another --name"
        )
        # zeroconf's probe (RFC 6762) asks with the unicast-response bit: where
        # several responders share a host, and so port 5353, the holder's
        # unicast answer may reach another socket than ours and the probe
        # passes. Our browser, running meanwhile, may resolve the holder's
        # record first: that settles it too, before we announce anything.
        registering = asyncio.ensure_future(zc.async_register_service(info))
        claimed = asyncio.ensure_future(self._name_claimed.wait())
        try:
            await asyncio.wait([registering, claimed], return_when=asyncio.FIRST_COMPLETED)
            if not registering.done():
                raise taken  # claimed while we probe
            announced = await registering
        except NonUniqueNameException:
            raise taken from None
        finally:
            claimed.cancel()
            if not registering.done():
                registering.cancel()  # still probing: nothing is registered yet
            await asyncio.wait([registering, claimed])
        self._registered = True
        log.info(
            "mDNS: announcing %s (id %s) on %s, rpc port %d",
            self._advert.name,
            self._advert.id,
            ", ".join(self._interfaces or ("all interfaces",)),
            self._advert.rpc_port,
        )
        return announced

    def _addresses(self) -> list[str]:
        if self._interfaces is not None:
            return list(self._interfaces)
        found = _machine_addresses()
        if not found:
            log.warning(
                "mDNS: this machine has no IPv4 address but loopback; peers cannot reach it"
            )
            return ["127.0.0.1"]
        return found

    async def _unregister(self, zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        """Send goodbyes so that peers drop us now, not when our record expires."""
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                await (await zc.async_unregister_service(info))
        except TimeoutError:
            log.warning("mDNS: goodbye for %s not sent within %.1f s", info.name, GOODBYE_TIMEOUT)

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Called synchronously by zeroconf on the event loop: only schedule here, so
        # that nothing we do can raise into zeroconf's own record processing.
        tasks = self._tasks
        if tasks is None or service_type != SERVICE_TYPE:
            return
        previous = self._resolving.pop(name, None)
        if previous is not None:
            previous.cancel()
        if state_change is ServiceStateChange.Removed:
            tasks.create_task(self._gone(name))
            return
        task = tasks.create_task(self._resolve(zeroconf, name))
        self._resolving[name] = task
        task.add_done_callback(lambda done: self._forget_resolution(name, done))

    def _forget_resolution(self, name: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(name) is task:
            del self._resolving[name]

    async def _gone(self, name: str) -> None:
        advert = self._seen.pop(name, None)
        if advert is not None:
            log.info("mDNS: %s (id %s) left", advert.name, advert.id)
            self._on_event(PeerGone(advert.name))

    async def _resolve(self, zeroconf: Zeroconf, name: str) -> None:
        try:
            advert = await resolve_advert(zeroconf, name, self._resolve_timeout)
        except ProtocolError as exc:
            self._report_once(name, "garbage", "ignoring mDNS record %r: %s", name, exc.message)
            return
        if advert is None:
            self._report_once(
                name,
                "unresolved",
                "ignoring mDNS record %r: no complete answer within %.1f s",
                name,
                self._resolve_timeout,
            )
            return
        self._accept(name, advert)

    def _accept(self, name: str, advert: Advert) -> None:
        ours = self._advert
        if advert.name.lower() == ours.name.lower():
            if advert.id != ours.id and not self._registered:
                # It held the name before we registered it: the name is its.
                self._name_claimed.set()
            if advert.id != ours.id:
                self._report_once(
                    name,
                    "collision",
                    "mDNS: another node (id %s at %s) claims our name %r; ignoring it. "
                    "Give one of the two another --name",
                    advert.id,
                    ", ".join(advert.addresses) or "no address",
                    ours.name,
                )
            return
        if advert.mesh_id != ours.mesh_id:
            self._report_once(
                name,
                "foreign",
                "mDNS: ignoring node %r at %s: it belongs to mesh %s, we are %s "
                "(use the same mesh key on both if they should work together)",
                advert.name,
                ", ".join(advert.addresses) or "no address",
                advert.mesh_id,
                ours.mesh_id,
            )
            return
        if not advert.addresses:
            self._report_once(name, "garbage", "ignoring mDNS record %r: no address", name)
            return
        if self._networks is not None:
            # Only peers on our interfaces' networks: the socket option above cannot cover
            # the instant before it is set, and a record may name any address at all.
            reachable = tuple(a for a in advert.addresses if on_networks(self._networks, a))
            if not reachable:
                self._report_once(
                    name,
                    "outside",
                    "mDNS: ignoring node %r at %s: not on the networks of %s",
                    advert.name,
                    ", ".join(advert.addresses),
                    ", ".join(self._interfaces or ()),
                )
                return
            advert = dataclasses.replace(advert, addresses=reachable)
        if self._seen.get(name) == advert:
            return
        if name not in self._seen:
            log.info(
                "mDNS: found %s (id %s) at %s, rpc port %d",
                advert.name,
                advert.id,
                ", ".join(advert.addresses),
                advert.rpc_port,
            )
        self._seen[name] = advert
        self._on_event(PeerSeen(advert))

    def _report_once(self, name: str, kind: str, message: str, *args: object) -> None:
        self._warn_once(f"{kind}:{name.lower()}", message, *args)


async def _wait_for(announced: Awaitable[object]) -> None:
    """Hold zeroconf's announcement task inside our task group, so it is cancelled with us."""
    await announced


def open_zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    """Zeroconf on ``interfaces`` (checked addresses; None: every IPv4 interface).

    ConfigError when the sockets cannot be opened (an address this machine lacks).
    """
    choice: list[str] | InterfaceChoice
    if interfaces is None:
        choice, version = InterfaceChoice.All, IPVersion.V4Only
    else:
        choice, version = list(interfaces), None  # None: from the addresses
    try:
        return AsyncZeroconf(interfaces=choice, ip_version=version)
    except OSError as exc:
        where = ", ".join(interfaces or ("all interfaces",))
        raise ConfigError(f"cannot start mDNS on {where}: {exc.strerror or exc}") from exc


async def resolve_advert(zeroconf: Zeroconf, name: str, timeout_s: float) -> Advert | None:
    """The advert behind instance ``name``; None without a complete answer in time.

    ProtocolError when the name or the record is malformed (see ``parse_advert``).
    """
    try:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
    except BadTypeInNameException:
        raise ProtocolError("malformed name") from None
    if not await info.async_request(zeroconf, timeout_s * 1000):
        return None
    return parse_advert(name, info.properties, info.parsed_addresses(), info.port)


def check_interfaces(interfaces: Sequence[str]) -> tuple[str, ...]:
    """The interface addresses normalised; ConfigError for anything that is not one."""
    if isinstance(interfaces, str):
        raise ConfigError("interfaces must be a list of IP addresses, not one string")
    checked: list[str] = []
    for text in interfaces:
        try:
            checked.append(host_ip(text))
        except ValueError as exc:
            raise ConfigError(f"mDNS interface {text!r} cannot be used: {exc}") from None
    if not checked:
        raise ConfigError("mDNS needs at least one interface address (or None for all)")
    return tuple(checked)


def check_own_addresses(interfaces: Sequence[str]) -> None:
    """AddressUnavailable unless each of ``interfaces`` (checked addresses) is this machine's.

    Asked before a node listens, so that ``--interface`` with an address the
    machine lacks is one clear error rather than a failure of mDNS later.
    """
    # Compared without an IPv6 scope (fe80::1%eth0): ifaddr gives none.
    own = [ipaddress.ip_address(text.split("%")[0]) for text in _all_addresses()]
    for text in interfaces:
        if ipaddress.ip_address(text.split("%")[0]) not in own:
            shown = ", ".join(str(a) for a in own[:8]) + (", ..." if len(own) > 8 else "")
            raise AddressUnavailable(
                f"--interface {text} is not an address of this machine (its addresses: "
                f"{shown}); give the IP address of the interface mDNS should use"
            )


def _all_addresses() -> list[str]:
    """Every address of this machine, IPv4 and IPv6, loopback included."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            if text not in found:
                found.append(text)
    return found


def interface_networks(interfaces: Sequence[str]) -> tuple[Network, ...]:
    """The subnets of the given interface addresses, as this machine has them configured."""
    prefixes: dict[str, int] = {}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            prefixes.setdefault(text, ip.network_prefix)
    # An address the machine does not have fails later, in zeroconf; alone, it covers itself.
    return tuple(network_of(address, prefixes.get(address)) for address in interfaces)


def _machine_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this machine, to advertise when using them all."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):  # IPv6 arrives as a tuple; we announce IPv4
                continue
            address = ipaddress.IPv4Address(ip.ip)
            if not address.is_loopback and ip.ip not in found:
                found.append(ip.ip)
    return found


def hear_only_joined_groups(zeroconf: Zeroconf) -> None:
    """Make the wildcard listen socket hear multicast only from our own interfaces.

    zeroconf binds its receiving socket to 0.0.0.0:5353 and joins the mDNS
    group on the chosen interfaces only. On Linux such a socket nevertheless
    receives the group's traffic from every interface where *any* socket of
    the machine joined it (IP_MULTICAST_ALL defaults to on), so with avahi
    running, a node limited to 127.0.0.1 would still hear, and then dial,
    nodes on the real LAN. Turning the option off keeps ``--interface``
    an honest boundary.
    """
    if not sys.platform.startswith("linux"):
        return
    for reader in zeroconf.engine.readers:
        sock = reader.sock
        with contextlib.suppress(OSError):
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
            elif sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_ALL, 0)
