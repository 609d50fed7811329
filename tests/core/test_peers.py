"""Membership with an explicit clock: join, suspect, refute, die, restart, forget.

The table drives one node ("a") through timed steps and checks the events
each step returns and the state of member "b" after it. Reasons are free
text, checked once on their own, so the table matches them with ``ANY``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any
from unittest.mock import ANY

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.membership.peers import (
    MAX_MEMBERS,
    MAX_MODELS,
    MAX_SLOTS,
    AddressLearned,
    Event,
    Gossip,
    Hearsay,
    Load,
    Member,
    MemberDied,
    MemberForgotten,
    MemberJoined,
    MemberRefuted,
    MemberRestarted,
    Membership,
    MembershipConfig,
    MemberState,
    MemberSuspected,
    ModelHolding,
    format_address,
    parse_gossip,
)
from mesh.errors import BadRequest, ConfigError

ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD
SHA = "ab" * 32
LOAD = Load(
    models=(ModelHolding("digits-small", SHA),),
    service_s={"digits-small": 0.004},
    queued_s=0.25,
    free_slots=2,
    role="node",
)
PEER_HOST = "127.0.0.1"


def gossip(
    name: str = "b",
    *,
    id: str | None = None,
    incarnation: int = 1000,
    host: str | None = None,
    rpc_port: int = 7701,
    members: Sequence[Hearsay] = (),
) -> Gossip:
    return Gossip(
        name=name,
        id=id if id is not None else f"id-{name}",
        incarnation=incarnation,
        host=host,
        rpc_port=rpc_port,
        http_port=8001,
        mesh_id="open",
        load=LOAD,
        members=tuple(members),
    )


def said(
    name: str,
    *,
    age_s: float = 0.0,
    state: MemberState = ALIVE,
    incarnation: int = 1000,
    id: str | None = None,
    host: str = "10.0.0.9",
    rpc_port: int = 7709,
) -> Hearsay:
    return Hearsay(
        name=name,
        id=id if id is not None else f"id-{name}",
        incarnation=incarnation,
        host=host,
        rpc_port=rpc_port,
        state=state,
        age_s=age_s,
    )


def table(**config: float) -> Membership:
    return Membership(self_name="a", self_id="id-a", config=MembershipConfig(**config))


Action = Callable[[Membership, float], list[Event]]


def hear(g: Gossip) -> Action:
    return lambda m, now: m.heard_from(g, peer_host=PEER_HOST, now=now)


def tick(m: Membership, now: float) -> list[Event]:
    return m.tick(now)


def lost(name: str) -> Action:
    return lambda m, now: m.connection_lost(name, now=now)


def told(*entries: Hearsay, via: str = "c") -> Action:
    return lambda m, now: m.hearsay(entries, via=via, now=now)


Step = tuple[float, Action, list[Event], MemberState | None]

JOIN: Step = (0.0, hear(gossip()), [MemberJoined("b")], ALIVE)
SUSPECTED: Step = (0.8, tick, [MemberSuspected("b", ANY)], SUSPECT)
DIED: Step = (1.41, tick, [MemberDied("b", ANY)], DEAD)

SCENARIOS: dict[str, list[Step]] = {
    "join": [JOIN],
    "refresh keeps it alive": [
        JOIN,
        (0.5, hear(gossip()), [], ALIVE),
        (1.29, tick, [], ALIVE),
        (1.31, tick, [MemberSuspected("b", ANY)], SUSPECT),
    ],
    "suspect after silence": [JOIN, (0.79, tick, [], ALIVE), SUSPECTED],
    "refute by direct gossip": [
        JOIN,
        SUSPECTED,
        (1.0, hear(gossip()), [MemberRefuted("b")], ALIVE),
        (1.79, tick, [], ALIVE),
    ],
    "refute by hearsay newer than the suspicion": [
        JOIN,
        SUSPECTED,
        (1.0, told(said("b", age_s=0.1)), [MemberRefuted("b", via="c")], ALIVE),
        # Refuted at 1.0: a full suspect_after_s of grace from then.
        (1.79, tick, [], ALIVE),
        (1.81, tick, [MemberSuspected("b", ANY)], SUSPECT),
    ],
    "hearsay older than the suspicion does not refute": [
        JOIN,
        SUSPECTED,
        (1.0, told(said("b", age_s=0.3)), [], SUSPECT),
        # Within the latency margin after the suspicion began: still no news.
        (1.0, told(said("b", age_s=0.16)), [], SUSPECT),
    ],
    "hearsay of another incarnation does not refute": [
        JOIN,
        SUSPECTED,
        (1.0, told(said("b", incarnation=999)), [], SUSPECT),
        (
            1.0,
            told(said("b", incarnation=2000, id="id-b2")),
            [AddressLearned("b", "10.0.0.9", 7709, via="c")],
            SUSPECT,
        ),
    ],
    "hearsay calling it suspect refutes nothing": [
        JOIN,
        SUSPECTED,
        (1.0, told(said("b", state=SUSPECT)), [], SUSPECT),
    ],
    "others hearing it keep it alive": [
        JOIN,
        (0.7, told(said("b", age_s=0.0)), [], ALIVE),
        (1.49, tick, [], ALIVE),
        (1.51, tick, [MemberSuspected("b", ANY)], SUSPECT),
    ],
    "die": [JOIN, SUSPECTED, (1.39, tick, [], SUSPECT), DIED],
    "hearsay does not revive the dead": [
        JOIN,
        SUSPECTED,
        DIED,
        (1.5, told(said("b", age_s=0.0)), [], DEAD),
        (1.6, tick, [], DEAD),
    ],
    "hearsay of a dead member we lost the link to prompts a connection": [
        JOIN,
        SUSPECTED,
        DIED,
        (1.45, lost("b"), [], DEAD),
        (1.5, told(said("b", age_s=0.0)), [AddressLearned("b", "10.0.0.9", 7709, via="c")], DEAD),
    ],
    "back from dead by direct gossip (healed partition)": [
        JOIN,
        SUSPECTED,
        DIED,
        (5.0, hear(gossip()), [MemberJoined("b", rejoined=True)], ALIVE),
        (5.79, tick, [], ALIVE),
    ],
    "restart: a new incarnation is the same member": [
        JOIN,
        (
            0.5,
            hear(gossip(incarnation=2000, id="id-b2")),
            [MemberRestarted("b", 1000, 2000)],
            ALIVE,
        ),
        (0.6, hear(gossip(incarnation=2000, id="id-b2")), [], ALIVE),
    ],
    "restart after death": [
        JOIN,
        SUSPECTED,
        DIED,
        (
            3.0,
            hear(gossip(incarnation=2000, id="id-b2")),
            [MemberRestarted("b", 1000, 2000)],
            ALIVE,
        ),
    ],
    "restart refutes suspicion": [
        JOIN,
        (0.3, lost("b"), [MemberSuspected("b", "connection lost")], SUSPECT),
        (
            0.5,
            hear(gossip(incarnation=2000, id="id-b2")),
            [MemberRestarted("b", 1000, 2000)],
            ALIVE,
        ),
    ],
    "stale incarnation ignored, its hearsay too": [
        (0.0, hear(gossip(incarnation=2000)), [MemberJoined("b")], ALIVE),
        (0.5, hear(gossip(incarnation=1000, members=[said("d")])), [], ALIVE),
        # The stale gossip did not count as hearing from b.
        (0.8, tick, [MemberSuspected("b", ANY)], SUSPECT),
        (1.0, hear(gossip(incarnation=1000)), [], SUSPECT),
    ],
    "same incarnation, another id: the larger id wins everywhere": [
        (0.0, hear(gossip(id="id-b1")), [MemberJoined("b")], ALIVE),
        (0.1, hear(gossip(id="id-b0")), [], ALIVE),
        (0.2, hear(gossip(id="id-b2")), [MemberRestarted("b", 1000, 1000)], ALIVE),
    ],
    "forget after forget_after_s": [
        JOIN,
        SUSPECTED,
        DIED,
        (31.40, tick, [], DEAD),
        (31.42, tick, [MemberForgotten("b")], None),
        (31.5, tick, [], None),
    ],
    "forgotten member speaks again: a new join": [
        JOIN,
        SUSPECTED,
        DIED,
        (31.42, tick, [MemberForgotten("b")], None),
        (40.0, hear(gossip()), [MemberJoined("b")], ALIVE),
    ],
    "connection lost: suspect at once, dead after dead_after_s": [
        JOIN,
        (0.5, hear(gossip()), [], ALIVE),
        (0.6, lost("b"), [MemberSuspected("b", "connection lost")], SUSPECT),
        (0.6, lost("b"), [], SUSPECT),
        (1.19, tick, [], SUSPECT),
        (1.21, tick, [MemberDied("b", ANY)], DEAD),
        (1.22, lost("b"), [], DEAD),
    ],
    "connection lost, then refuted by others: reconnect": [
        JOIN,
        (0.6, lost("b"), [MemberSuspected("b", "connection lost")], SUSPECT),
        (
            0.8,
            told(said("b", age_s=0.05)),
            [MemberRefuted("b", via="c"), AddressLearned("b", "10.0.0.9", 7709, via="c")],
            ALIVE,
        ),
    ],
    "connection lost to an unknown name": [(0.0, lost("b"), [], None)],
    "our own name with another id is ignored": [
        (0.0, hear(gossip("a", id="impostor")), [], None),
    ],
    "our own gossip (a loop to ourselves) is ignored": [
        (0.0, hear(gossip("a", id="id-a")), [], None),
    ],
}


@pytest.mark.parametrize("steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario(steps: list[Step]) -> None:
    m = table()
    for i, (now, action, expected, state) in enumerate(steps):
        assert action(m, now) == expected, f"step {i} at t={now}"
        member = m.get("b")
        assert (member.state if member else None) == state, f"step {i} at t={now}"
        assert m.get("a") is None, "we are never our own member"


def test_reasons_say_why() -> None:
    m = table()
    m.heard_from(gossip(), peer_host=PEER_HOST, now=0.0)
    assert m.tick(0.8) == [MemberSuspected("b", "no gossip for 0.80 s")]
    assert m.get("b").reason == "no gossip for 0.80 s"  # type: ignore[union-attr]
    (died,) = m.tick(1.5)
    assert isinstance(died, MemberDied)
    assert died.reason == "no gossip for 0.80 s, then not heard for 0.70 s"
    m.heard_from(gossip(), peer_host=PEER_HOST, now=2.0)
    assert m.get("b").reason == ""  # type: ignore[union-attr]


def test_join_records_what_the_gossip_says() -> None:
    m = table()
    m.heard_from(gossip(host=None), peer_host="10.1.2.3", now=3.0)
    b = m.get("b")
    assert b == Member(
        name="b",
        id="id-b",
        incarnation=1000,
        host="10.1.2.3",  # no host in the gossip: the connection's peer address
        rpc_port=7701,
        http_port=8001,
        mesh_id="open",
        state=ALIVE,
        load=LOAD,
        last_heard=3.0,
        state_since=3.0,
        connected=True,
    )
    m.heard_from(gossip(host="10.9.9.9", rpc_port=7777), peer_host="10.1.2.3", now=3.2)
    assert m.get("b").address == "10.9.9.9:7777"  # type: ignore[union-attr]


# --- hearsay and AddressLearned ---------------------------------------------------


def test_unknown_members_are_learned_never_joined() -> None:
    m = table()
    events = m.heard_from(
        gossip("c", members=[said("d", age_s=0.1), said("a"), said("c")]),
        peer_host=PEER_HOST,
        now=0.0,
    )
    assert events == [MemberJoined("c"), AddressLearned("d", "10.0.0.9", 7709, via="c")]
    assert m.get("d") is None
    assert [x.name for x in m.members()] == ["c"]


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (said("a"), "ourselves"),
        (said("b"), "known and connected"),
        (said("d", age_s=0.81), "not heard for longer than suspect_after_s"),
        (said("d", state=SUSPECT), "suspect where they are"),
        (said("d", state=DEAD), "dead where they are"),
        (said("c"), "the sender speaks for itself"),
    ],
)
def test_hearsay_not_learned(entry: Hearsay, why: str) -> None:
    m = table()
    m.heard_from(gossip("b"), peer_host=PEER_HOST, now=0.0)
    assert m.hearsay([entry], via="c", now=0.1) == [], why


def test_learned_addresses_repeat_only_after_address_retry_s() -> None:
    m = table(address_retry_s=2.0)
    entry = said("d", age_s=0.1)
    learned = [AddressLearned("d", "10.0.0.9", 7709, via="c")]
    assert m.hearsay([entry], via="c", now=0.0) == learned
    assert m.hearsay([entry], via="c", now=1.9) == []
    assert m.hearsay([entry], via="c", now=2.0) == learned
    # A different address is news at once.
    moved = replace(entry, host="10.0.0.10")
    assert m.hearsay([moved], via="c", now=2.1) == [AddressLearned("d", "10.0.0.10", 7709, via="c")]
    # Once it joins, the hint is spent; it is learned afresh if needed.
    m.heard_from(gossip("d"), peer_host=PEER_HOST, now=2.2)
    m.connection_lost("d", now=2.3)
    assert m.hearsay([said("d", age_s=0.0)], via="c", now=2.4) == [
        MemberRefuted("d", via="c"),
        AddressLearned("d", "10.0.0.9", 7709, via="c"),
    ]


def test_invented_members_cannot_grow_memory_without_bound() -> None:
    m = table()
    entries = [said(f"ghost-{i}") for i in range(MAX_MEMBERS + 10)]
    assert len(m.hearsay(entries, via="c", now=0.0)) == MAX_MEMBERS
    # Hints age out after forget_after_s, and then there is room again.
    m.tick(30.0)
    assert len(m.hearsay(entries[-5:], via="c", now=30.0)) == 5


def test_hearsay_echoes_cannot_keep_a_ghost_alive() -> None:
    """Two nodes vouching for a dead member to each other must not keep it alive."""
    x, y = Membership(self_name="x", self_id="id-x"), Membership(self_name="y", self_id="id-y")
    for m, other in ((x, "y"), (y, "x")):
        m.heard_from(gossip("b"), peer_host=PEER_HOST, now=0.0)
        m.heard_from(gossip(other), peer_host=PEER_HOST, now=0.0)
    now = 0.0
    died: dict[str, float] = {}
    while now < 3.0:
        now = round(now + 0.05, 2)
        # x and y keep hearing each other, each passing on its view of b in
        # gossip that was 20 ms in flight, which makes every report look newer.
        x.heard_from(gossip("y", members=y.digest(now - 0.02)), peer_host=PEER_HOST, now=now)
        y.heard_from(gossip("x", members=x.digest(now - 0.02)), peer_host=PEER_HOST, now=now)
        for m in (x, y):
            if any(isinstance(e, MemberDied) for e in m.tick(now)):
                died[m.self_name] = now
    # Dead 1.4 s after the last report, which in-flight time makes 20 ms late.
    assert died == {"x": pytest.approx(1.45), "y": pytest.approx(1.45)}


# --- timing ---------------------------------------------------------------------


def run_until_dead(m: Membership, name: str) -> float:
    """Wake at each deadline, as the driver does; the time ``name`` is declared dead."""
    while (deadline := m.next_deadline()) is not None:
        if any(isinstance(e, MemberDied) and e.name == name for e in m.tick(deadline)):
            return deadline
    raise AssertionError("never died")


def test_cable_pulled_dead_at_suspect_plus_dead_after() -> None:
    m = table()
    m.heard_from(gossip(), peer_host=PEER_HOST, now=10.0)
    assert m.next_deadline() == pytest.approx(10.8)
    assert run_until_dead(m, "b") == pytest.approx(10.0 + 0.8 + 0.6)


def test_killed_dead_at_dead_after_from_the_dropped_connection() -> None:
    m = table()
    m.heard_from(gossip(), peer_host=PEER_HOST, now=10.0)
    m.connection_lost("b", now=10.15)
    assert run_until_dead(m, "b") == pytest.approx(10.75)


def test_saturated_peer_gossiping_late_is_never_suspected() -> None:
    m = table()
    events: list[Event] = []
    for step in range(200):
        now = step * 0.05
        if step % 14 == 0:  # every 0.7 s instead of 0.2
            events += m.heard_from(gossip(), peer_host=PEER_HOST, now=now)
        events += m.tick(now)
    assert events == [MemberJoined("b")]


def test_late_burst_is_suspected_and_refuted_not_killed() -> None:
    m = table()
    m.heard_from(gossip(), peer_host=PEER_HOST, now=0.0)
    assert m.tick(0.9) == [MemberSuspected("b", ANY)]
    assert m.tick(1.2) == []
    assert m.heard_from(gossip(), peer_host=PEER_HOST, now=1.3) == [MemberRefuted("b")]


def test_our_own_stalled_loop_suspects_but_does_not_kill() -> None:
    """Suspicion is not back-dated: after a 5 s stall peers still get dead_after_s."""
    m = table()
    m.heard_from(gossip(), peer_host=PEER_HOST, now=0.0)
    assert m.tick(5.0) == [MemberSuspected("b", ANY)]
    assert m.heard_from(gossip(), peer_host=PEER_HOST, now=5.01) == [MemberRefuted("b")]


def test_next_deadline() -> None:
    m = table()
    assert m.next_deadline() is None
    m.heard_from(gossip("b"), peer_host=PEER_HOST, now=0.0)
    m.heard_from(gossip("c"), peer_host=PEER_HOST, now=0.5)
    assert m.next_deadline() == pytest.approx(0.8)
    m.connection_lost("c", now=0.6)
    assert m.next_deadline() == pytest.approx(0.8)
    m.heard_from(gossip("b"), peer_host=PEER_HOST, now=0.7)
    assert m.next_deadline() == pytest.approx(1.2)  # c: suspect since 0.6
    assert m.tick(1.19) == []


# --- reading the table -------------------------------------------------------------


def test_members_sorted_and_alive() -> None:
    m = table()
    for name in ("d", "b", "c"):
        m.heard_from(gossip(name), peer_host=PEER_HOST, now=0.0)
    m.connection_lost("c", now=0.1)
    assert [x.name for x in m.members()] == ["b", "c", "d"]
    assert [x.name for x in m.alive()] == ["b", "d"]


def test_digest_contents_and_ages() -> None:
    m = table()
    m.heard_from(gossip("b"), peer_host=PEER_HOST, now=0.0)
    m.heard_from(gossip("c", host="10.0.0.3", rpc_port=7703), peer_host=PEER_HOST, now=0.5)
    m.connection_lost("c", now=0.6)
    m.hearsay([said("d")], via="b", now=0.7)  # learned, not a member: not passed on
    assert m.digest(1.0) == (
        Hearsay("b", "id-b", 1000, PEER_HOST, 7701, ALIVE, 1.0),
        Hearsay("c", "id-c", 1000, "10.0.0.3", 7703, SUSPECT, 0.5),
    )
    # Others vouching for b does not make our report of it any fresher.
    m.hearsay([said("b", age_s=0.0)], via="c", now=1.0)
    assert m.digest(1.0)[0].age_s == 1.0


def test_digest_is_never_too_long_to_parse() -> None:
    m = table(suspect_after_s=1000.0)
    for i in range(MAX_MEMBERS + 3):
        m.heard_from(gossip(f"n{i:05}"), peer_host=PEER_HOST, now=float(i))
    m.connection_lost("n01026", now=2000.0)
    digest = m.digest(2000.0)
    assert len(digest) == MAX_MEMBERS
    # The suspect one is left out first, then the longest silent.
    assert {"n01026", "n00000", "n00001"}.isdisjoint(h.name for h in digest)
    parsed = parse_gossip([gossip("z", members=digest).to_wire()])
    assert parsed.members == digest


def test_to_status() -> None:
    m = table()
    m.heard_from(gossip(), peer_host=PEER_HOST, now=1.0)
    assert m.get("b").to_status(1.25) == {  # type: ignore[union-attr]
        "name": "b",
        "id": "id-b",
        "address": "127.0.0.1:7701",
        "http_port": 8001,
        "state": "alive",
        "reason": "",
        "incarnation": 1000,
        "connected": True,
        "role": "node",
        "models": ["digits-small"],
        "service_s": {"digits-small": 0.004},
        "queued_s": 0.25,
        "free_slots": 2,
        "last_heard_s": 0.25,
    }


def test_format_address() -> None:
    assert format_address("10.0.0.1", 7700) == "10.0.0.1:7700"
    assert format_address("::1", 7700) == "[::1]:7700"


@pytest.mark.parametrize(
    "config",
    [
        {"suspect_after_s": 0},
        {"dead_after_s": -1},
        {"forget_after_s": math.nan},
        {"address_retry_s": math.inf},
        {"hearsay_margin_s": -0.1},
    ],
)
def test_config_is_checked(config: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        MembershipConfig(**config)


# --- parse_gossip ------------------------------------------------------------------

texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40).filter(str.isprintable)
hosts = st.from_regex(r"[A-Za-z0-9._:%-]{1,40}", fullmatch=True).filter(
    lambda h: h not in ("0.0.0.0", "::")
)
ports = st.integers(1, 65535)
seconds = st.floats(0, 1e9, allow_nan=False) | st.integers(0, 10**9)
incarnations = st.integers(0, 2**63 - 1)
model_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)
loads = st.builds(
    Load,
    models=st.lists(
        st.builds(ModelHolding, model_names, st.text("0123456789abcdef", min_size=64, max_size=64)),
        max_size=5,
        unique_by=lambda h: h.name,
    ).map(tuple),
    service_s=st.dictionaries(model_names, seconds, max_size=5),
    queued_s=seconds,
    free_slots=st.integers(0, MAX_SLOTS),
    role=st.sampled_from(["node", "gateway"]),
)
hearsays = st.builds(
    Hearsay,
    name=texts,
    id=texts,
    incarnation=incarnations,
    host=hosts,
    rpc_port=ports,
    state=st.sampled_from(MemberState),
    age_s=seconds,
)
gossips = st.builds(
    Gossip,
    name=texts,
    id=texts,
    incarnation=incarnations,
    host=st.none() | hosts,
    rpc_port=ports,
    http_port=st.none() | ports,
    mesh_id=texts,
    load=loads,
    members=st.lists(hearsays, max_size=5, unique_by=lambda h: h.name).map(tuple),
)


def over_the_wire(obj: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


@given(gossips)
@settings(max_examples=200)
def test_round_trip(g: Gossip) -> None:
    parsed = parse_gossip(over_the_wire([g.to_wire()]))
    assert parsed == g
    assert parse_gossip([parsed.to_wire()]) == parsed


def test_unknown_keys_are_ignored_for_rolling_upgrades() -> None:
    wire = gossip(members=[said("d")]).to_wire()
    wire["zone"] = "kitchen"
    wire["load"]["gpu"] = True
    wire["members"][0]["rtt_s"] = 0.001
    assert parse_gossip([wire]) == gossip(members=[said("d")])


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
BASE = gossip(members=[said("d")]).to_wire()
MODEL_WIRE = {"name": "m", "sha256": SHA}

NONSENSE: list[tuple[tuple[str | int, ...], Any, str]] = [
    (("name",), 5, "name must be a printable string"),
    (("name",), "", "name must be"),
    (("name",), "x" * 256, "name must be"),
    (("name",), "evil\nname", "name must be"),
    (("name",), DELETE, "name is missing"),
    (("id",), b"bytes", "id must be"),
    (("id",), None, "id must be"),
    (("incarnation",), -1, "incarnation must be an integer"),
    (("incarnation",), True, "incarnation must be an integer"),
    (("incarnation",), 1.5, "incarnation must be an integer"),
    (("incarnation",), 2**63, "incarnation must be an integer"),
    (("incarnation",), "1000", "incarnation must be an integer"),
    (("host",), "", "host must be an IP address or host name"),
    (("host",), "a host", "host must be an IP address or host name"),
    (("host",), "0.0.0.0", "host must be an address one can connect to"),
    (("host",), "::", "host must be an address one can connect to"),
    (("host",), "h" * 256, "host must be"),
    (("host",), 7, "host must be"),
    (("rpc_port",), 0, "rpc_port must be an integer in 1..65535"),
    (("rpc_port",), 70000, "rpc_port must be"),
    (("rpc_port",), True, "rpc_port must be"),
    (("rpc_port",), 7700.0, "rpc_port must be"),
    (("rpc_port",), "7700", "rpc_port must be"),
    (("rpc_port",), DELETE, "rpc_port is missing"),
    (("http_port",), 0, "http_port must be"),
    (("http_port",), 65536, "http_port must be"),
    (("http_port",), DELETE, "http_port is missing"),
    (("mesh_id",), "x" * 256, "mesh_id must be"),
    (("load",), [], "load must be a map"),
    (("load",), DELETE, "load is missing"),
    (("load", "queued_s"), -1.0, "load.queued_s must be a number of seconds"),
    (("load", "queued_s"), math.nan, "load.queued_s must be"),
    (("load", "queued_s"), math.inf, "load.queued_s must be"),
    (("load", "queued_s"), 1e10, "load.queued_s must be"),
    (("load", "queued_s"), True, "load.queued_s must be"),
    (("load", "queued_s"), "0", "load.queued_s must be"),
    (("load", "free_slots"), -1, "load.free_slots must be an integer"),
    (("load", "free_slots"), True, "load.free_slots must be"),
    (("load", "free_slots"), 1.0, "load.free_slots must be"),
    (("load", "free_slots"), MAX_SLOTS + 1, "load.free_slots must be"),
    (("load", "role"), "", "load.role must be"),
    (("load", "role"), "Gateway!", "load.role must be"),
    (("load", "role"), "x" * 40, "load.role must be"),
    (("load", "role"), 3, "load.role must be"),
    (("load", "role"), DELETE, "load.role is missing"),
    (("load", "models"), "m", "load.models must be a list"),
    (("load", "models"), [MODEL_WIRE] * (MAX_MODELS + 1), "load.models must have at most 1024"),
    (("load", "models"), [MODEL_WIRE, MODEL_WIRE], "load.models names 'm' twice"),
    (("load", "models", 0), "m", "load.models[0] must be a map"),
    (("load", "models", 0, "name"), "../etc/passwd", "load.models[0].name must be a model name"),
    (("load", "models", 0, "name"), 5, "load.models[0].name must be"),
    (("load", "models", 0, "sha256"), "xyz", "load.models[0].sha256 must be 64 lower-case hex"),
    (("load", "models", 0, "sha256"), SHA.upper(), "load.models[0].sha256 must be"),
    (("load", "models", 0, "sha256"), DELETE, "load.models[0].sha256 is missing"),
    (("load", "service_s"), [], "load.service_s must be a map"),
    (("load", "service_s"), {"m": -1.0}, "load.service_s['m'] must be a number of seconds"),
    (("load", "service_s"), {"m": math.nan}, "load.service_s['m'] must be"),
    (("load", "service_s"), {"m": "1"}, "load.service_s['m'] must be"),
    (("load", "service_s"), {5: 1.0}, "load.service_s key must be a model name"),
    (
        ("load", "service_s"),
        {f"m{i}": 0.1 for i in range(MAX_MODELS + 1)},
        "load.service_s must have at most 1024",
    ),
    (("members",), "d", "members must be a list"),
    (("members",), DELETE, "members is missing"),
    (("members",), [BASE["members"][0]] * (MAX_MEMBERS + 1), "members must have at most 1024"),
    (("members",), [BASE["members"][0]] * 2, "members names 'd' twice"),
    (("members", 0), None, "members[0] must be a map"),
    (("members", 0, "state"), "zombie", "members[0].state must be one of"),
    (("members", 0, "state"), 1, "members[0].state must be"),
    (("members", 0, "age_s"), math.nan, "members[0].age_s must be"),
    (("members", 0, "age_s"), -0.5, "members[0].age_s must be"),
    (("members", 0, "age_s"), math.inf, "members[0].age_s must be"),
    (("members", 0, "age_s"), DELETE, "members[0].age_s is missing"),
    (("members", 0, "rpc_port"), 0, "members[0].rpc_port must be"),
    (("members", 0, "host"), None, "members[0].host must be"),
    (("members", 0, "incarnation"), True, "members[0].incarnation must be"),
    (("members", 0, "name"), "\x1b[31mred", "members[0].name must be"),
]


def mutated(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    wire: Any = over_the_wire(BASE)  # a deep copy
    target = wire
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return dict(wire)


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    NONSENSE,
    ids=[f"{'.'.join(map(str, p))}={str(v)[:20]!r}" for p, v, _ in NONSENSE],
)
def test_nonsense_is_rejected_naming_the_field(
    path: tuple[str | int, ...], value: Any, fragment: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_gossip([mutated(path, value)])
    assert fragment in str(caught.value)
    assert len(str(caught.value)) < 200, "a hostile value must not flood the log"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ([], "gossip takes one parameter, a map; got 0"),
        ([BASE, BASE], "got 2"),
        (["gossip"], "gossip must be a map"),
        ("gossip", "got str"),
    ],
)
def test_params_shape(params: Any, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_gossip(params)
    assert fragment in str(caught.value)


def leaves(obj: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in leaves(v, (*path, k))] + ([path] if path else [])
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in leaves(v, (*path, i))] + [path]
    return [path]


FULL = gossip(members=[said("d")]).to_wire()
FULL["load"]["models"].append(MODEL_WIRE)
FULL_LEAVES = leaves(FULL)
junk = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=300)
    | st.binary(max_size=16)
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)
)


@given(st.sampled_from(FULL_LEAVES), junk)
@settings(max_examples=400)
def test_any_field_replaced_by_junk_parses_or_is_a_bad_request(
    path: tuple[str | int, ...], value: Any
) -> None:
    wire: Any = over_the_wire(FULL)
    target = wire
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        parsed = parse_gossip([wire])
    except BadRequest:
        return
    assert isinstance(parsed, Gossip)
