"""mDNS discovery on loopback: nodes find each other, leave cleanly, shrug off forged records.

Everything binds to 127.0.0.1 (TESTING.md). Other test runs on this machine
may be using the same loopback mDNS domain at the same time, so every name
is unique to the test and assertions look only at the names a test made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

import mesh.mdns
from mesh.core.membership.adverts import SERVICE_TYPE, Advert, instance_name
from mesh.errors import ConfigError
from mesh.mdns import DiscoveryEvent, MdnsDiscovery, PeerGone, PeerSeen

LOOPBACK = ["127.0.0.1"]
MESH = "0123456789abcdef"
WAIT = 10.0  # generous: discovery normally takes about a second


def _advert(name: str, rpc_port: int, *, mesh_id: str = MESH, **extra: Any) -> Advert:
    fields: dict[str, Any] = {
        "name": name,
        "id": uuid.uuid4().hex[:12],
        "version": "0.1.0",
        "rpc_port": rpc_port,
        "http_port": None,
        "role": "node",
        "mesh_id": mesh_id,
        **extra,
    }
    return Advert(**fields)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Recorder:
    """Collects a discovery's events and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[DiscoveryEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: DiscoveryEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def seen(self, name: str) -> list[Advert]:
        return [e.advert for e in self.events if isinstance(e, PeerSeen) and e.advert.name == name]

    def seen_all(self, names: Iterable[str]) -> bool:
        return all(self.seen(name) for name in names)

    def gone(self, name: str) -> bool:
        return any(isinstance(e, PeerGone) and e.name == name for e in self.events)

    def names(self) -> set[str]:
        return {e.advert.name for e in self.events if isinstance(e, PeerSeen)}

    async def wait_for(self, condition: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(advert: Advert) -> AsyncIterator[Recorder]:
    """An MdnsDiscovery on 127.0.0.1 for the duration of the block."""
    recorder = Recorder()
    discovery = MdnsDiscovery(advert=advert, interfaces=LOOPBACK, on_event=recorder)
    ready = asyncio.Event()
    task = asyncio.create_task(discovery.run(ready))
    try:
        async with asyncio.timeout(WAIT):
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if task.done():
                task.result()
        yield recorder
    finally:
        task.cancel()
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def raw_zeroconf() -> AsyncIterator[AsyncZeroconf]:
    """A bare zeroconf on loopback, to forge records with."""
    zc = AsyncZeroconf(interfaces=LOOPBACK)
    try:
        yield zc
    finally:
        async with asyncio.timeout(WAIT):
            await zc.async_close()


async def _forge(
    zc: AsyncZeroconf,
    name: str,
    properties: dict[bytes, bytes | None],
    *,
    port: int = 7000,
    address: str = "127.0.0.1",
) -> AsyncServiceInfo:
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        instance_name(name),
        port=port,
        properties=properties,
        parsed_addresses=[address],
    )
    # cooperating_responders skips the probe, so a forger can claim a name already held.
    await (await zc.async_register_service(info, cooperating_responders=True))
    return info


def _txt(advert: Advert) -> dict[bytes, bytes | None]:
    return {
        b"id": advert.id.encode(),
        b"v": b"0.1.0",
        b"rpc": str(advert.rpc_port).encode(),
        b"role": b"node",
        b"mesh": advert.mesh_id.encode(),
    }


async def test_three_nodes_see_each_other_and_see_one_leave() -> None:
    adverts = [_advert(_unique(f"node{i}"), 7000 + i, http_port=8000 + i) for i in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        recorders = [await stack.enter_async_context(running(a)) for a in adverts]

        for me, recorder in zip(adverts, recorders, strict=True):
            others = [a for a in adverts if a is not me]
            await recorder.wait_for(functools.partial(recorder.seen_all, [a.name for a in others]))
            for other in others:
                seen = recorder.seen(other.name)[-1]
                assert (seen.id, seen.rpc_port, seen.http_port) == (
                    other.id,
                    other.rpc_port,
                    other.http_port,
                )
                assert (seen.role, seen.mesh_id, seen.version) == ("node", MESH, "0.1.0")
                assert seen.addresses == ("127.0.0.1",)
            assert not recorder.seen(me.name), "a node must not report itself"


async def test_a_node_that_stops_is_gone_at_once() -> None:
    leaver = _advert(_unique("leaver"), 7100)
    stayer = _advert(_unique("stayer"), 7101)
    async with running(stayer) as recorder:
        async with running(leaver):
            await recorder.wait_for(lambda: bool(recorder.seen(leaver.name)))
        # The goodbye arrives at once, long before the record would expire (two minutes).
        await recorder.wait_for(lambda: recorder.gone(leaver.name), timeout=3.0)
        assert len(recorder.seen(leaver.name)) == 1, "an unchanged record is reported once"


async def test_forged_records_are_ignored_and_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.mdns")
    me = _advert(_unique("me"), 7200)
    good = _advert(_unique("good"), 7201)
    garbage = _unique("garbage")
    non_utf8 = _unique("nonutf8")
    foreign = _advert(_unique("foreign"), 7202, mesh_id="fedcba9876543210")
    far = _advert(_unique("far"), 7203)
    disagree = _advert(_unique("disagree"), 7204)
    forged = {garbage, non_utf8, foreign.name, far.name, disagree.name, me.name}

    async with running(me) as recorder, raw_zeroconf() as zc:
        infos = [
            await _forge(zc, garbage, {b"id": b"x", b"rpc": b"99999", b"junk": b"\x00" * 200}),
            await _forge(zc, non_utf8, {**_txt(good), b"v": b"\xff\xfe"}),
            await _forge(zc, foreign.name, _txt(foreign), port=foreign.rpc_port),
            # 198.51.100.0/24 is TEST-NET-2: only text in a record, never contacted.
            await _forge(zc, far.name, _txt(far), port=far.rpc_port, address="198.51.100.7"),
            await _forge(zc, disagree.name, _txt(disagree), port=disagree.rpc_port + 1),
            # Our own name with someone else's id.
            await _forge(zc, me.name, {**_txt(me), b"id": b"impostor"}, port=me.rpc_port),
        ]
        # Each forged record changes once more: a second look must not log again.
        for info in infos:
            changed = AsyncServiceInfo(
                SERVICE_TYPE,
                info.name,
                port=info.port,
                properties={**info.properties, b"again": b"1"},
                parsed_addresses=info.parsed_addresses(),
                server=info.server,
            )
            await (await zc.async_update_service(changed))

        # A valid peer that arrives after all of that is still found: nothing crashed.
        good_info = await _forge(zc, good.name, _txt(good), port=good.rpc_port)
        await recorder.wait_for(lambda: bool(recorder.seen(good.name)))
        # Updates are resolved again and reported (the forged ones above took this path too).
        changed = AsyncServiceInfo(
            SERVICE_TYPE,
            good_info.name,
            port=good.rpc_port,
            properties={**_txt(good), b"http": b"9000"},
            parsed_addresses=["127.0.0.1"],
            server=good_info.server,
        )
        await (await zc.async_update_service(changed))
        await recorder.wait_for(lambda: recorder.seen(good.name)[-1].http_port == 9000)
        await asyncio.sleep(1.0)  # let late re-resolutions of the forged records land

        assert recorder.names() & forged == set()
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        for name in forged:
            about = [r.getMessage() for r in warnings if name in r.getMessage()]
            assert len(about) == 1, (name, about)
        messages = "\n".join(r.getMessage() for r in warnings)
        assert "claims our name" in messages and "impostor" in messages
        assert "belongs to mesh fedcba9876543210" in messages
        assert "not on the networks of 127.0.0.1" in messages
        assert "disagrees with the SRV port" in messages
        assert "not UTF-8" in messages
        assert all(r.name == "mesh.mdns" for r in warnings), "zeroconf complained"


async def test_a_name_already_taken_on_the_network_is_a_config_error() -> None:
    name = _unique("taken")
    holder = _advert(name, 7300)
    async with running(holder):
        with pytest.raises(ConfigError, match="already taken on this network"):
            async with running(_advert(name, 7301)):
                pass


async def test_only_loopback_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[AsyncZeroconf] = []

    class Recording(AsyncZeroconf):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(mesh.mdns, "AsyncZeroconf", Recording)
    async with running(_advert(_unique("lo"), 7400)):
        engine = made[0].zeroconf.engine
        assert engine.senders, "no socket to send on"
        for sender in engine.senders:
            # Sends leave through 127.0.0.1 only.
            assert sender.sock_name[0] == "127.0.0.1"
            multicast_if = sender.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
            assert socket.inet_ntoa(multicast_if) == "127.0.0.1"
        for reader in engine.readers:
            # zeroconf receives on a wildcard socket that joins the group on 127.0.0.1;
            # with IP_MULTICAST_ALL off it hears no other interface's group traffic.
            assert reader.sock_name[0] in {"127.0.0.1", "0.0.0.0"}
            assert reader.sock.getsockopt(socket.IPPROTO_IP, 49) == 0


@pytest.mark.parametrize(
    ("interfaces", "words"),
    [
        (["eth0"], "not an IP"),
        (["0.0.0.0"], "unicast"),
        ([], "at least one"),
        ("127.0.0.1", "list"),
    ],
)
def test_bad_interfaces_are_config_errors(interfaces: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        MdnsDiscovery(advert=_advert("x", 7000), interfaces=interfaces, on_event=lambda e: None)


def test_a_bad_own_name_fails_before_anything_is_sent() -> None:
    with pytest.raises(ConfigError, match="63"):
        MdnsDiscovery(advert=_advert("n" * 64, 7000), interfaces=LOOPBACK, on_event=lambda e: None)
