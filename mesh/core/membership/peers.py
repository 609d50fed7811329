"""Membership: who is in the mesh, how to reach them, and whether they live.

Pure: it is fed gossip, lost connections and the time, and it answers with
events; the driver in :mod:`mesh.node.membership` does the I/O and acts on them.
The records (:class:`Member`, :class:`MembershipConfig`) and the events are
in :mod:`mesh.core.membership.members`, and importable from here too.

Every node sends a ``gossip`` notification to each peer it is connected to,
every gossip interval: its own name, id, incarnation, address and load, and
its view of the others (:class:`Hearsay`). Members are keyed by name. A
member's ``id`` is random per process start and its ``incarnation`` is the
process's start time in ms, so a restart is the same member with a higher
incarnation. ::

            direct gossip from a new name
                        │
                        ▼           direct gossip, or hearsay newer
        ┌────────►   ALIVE   ◄──────────────────────────┐ than the suspicion
        │               │ silent for suspect_after_s,     │
        │               │ or our connection to it lost    │
        │               ▼                                 │
        │            SUSPECT ──────────────────────────────┘
        │ direct        │ not refuted within dead_after_s
        │ gossip        ▼
        └─────────    DEAD ── for forget_after_s ──► forgotten (removed)

The rules:

- **Joining takes direct gossip.** The driver calls :meth:`Membership.heard_from`
  only for gossip that came over an authenticated connection of our mesh.
  Hearsay alone never makes a member; an unknown member someone vouches for
  becomes :class:`AddressLearned`, so the driver connects to it.
- **Identity is ordered by ``(incarnation, id)``.** Gossip with a greater one
  is a restart (:class:`MemberRestarted`: whatever the old process held is
  gone); with a smaller one it is stale and ignored whole, hearsay included.
  Two processes with one name and one incarnation are told apart by id, the
  same way on every node, so the mesh agrees on which one it talks to.
- **Our own name** in gossip is ignored: either we reached ourselves, or
  another process uses our name. The driver tells the two apart and logs.
- **Direct gossip always wins**: it refutes suspicion (:class:`MemberRefuted`)
  and brings a DEAD member of the same incarnation back (a process that lived
  through a partition): :class:`MemberJoined` with ``rejoined=True``.
- **Whatever it sends counts, not only gossip** (:meth:`Membership.heard`):
  a member whose calls, answers or results still arrive stays ALIVE, and a
  SUSPECT one is refuted, so a node busy after a partition heals is not
  declared dead again while it answers. Only gossip brings back the DEAD.
- **Hearsay never kills and never revives.** It refutes a SUSPECT member when
  another node heard from the same process after our suspicion began (the
  indirect probe of SWIM), and it keeps the silence timer of an ALIVE member
  going while others still hear it. Ages in our own digest count only what
  *we* heard directly, so hearsay cannot echo between nodes and keep a dead
  member alive as a ghost.
- **Suspicion starts when a tick notices it, not back-dated.** If our own event
  loop stalls, the first late tick can suspect but not kill: peers still get
  ``dead_after_s`` of running loop to be heard. A driver that sleeps until
  :meth:`Membership.next_deadline` notices at once, so at defaults a peer
  whose cable is pulled is dead 0.8 + 0.6 = 1.4 s after it was last heard,
  and a SIGKILLed one (its connection drops) 0.6 s after the drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from mesh.core.membership.gossip import (
    MAX_MEMBERS,
    MAX_MODELS,
    MAX_SECONDS,
    MAX_SLOTS,
    MAX_TEXT,
    Gossip,
    Hearsay,
    Load,
    MemberState,
    ModelHolding,
    parse_gossip,
)
from mesh.core.membership.members import (
    AddressLearned,
    Event,
    Member,
    MemberDied,
    MemberForgotten,
    MemberJoined,
    MemberRefuted,
    MemberRestarted,
    MembershipConfig,
    MemberSuspected,
)
from mesh.core.wire.addresses import format_address

__all__ = [
    "MAX_MEMBERS",
    "MAX_MODELS",
    "MAX_SECONDS",
    "MAX_SLOTS",
    "MAX_TEXT",
    "AddressLearned",
    "Event",
    "Gossip",
    "Hearsay",
    "Load",
    "Member",
    "MemberDied",
    "MemberForgotten",
    "MemberJoined",
    "MemberRefuted",
    "MemberRestarted",
    "MemberState",
    "MemberSuspected",
    "Membership",
    "MembershipConfig",
    "ModelHolding",
    "format_address",
    "parse_gossip",
]


@dataclass(slots=True)
class _Hint:
    host: str
    rpc_port: int
    told_at: float


class Membership:
    """The member table of one node; every method takes the time as ``now``."""

    def __init__(
        self, *, self_name: str, self_id: str, config: MembershipConfig | None = None
    ) -> None:
        self.self_name = self_name
        self.self_id = self_id
        self.config = config if config is not None else MembershipConfig()
        self._members: dict[str, Member] = {}
        # Addresses passed to the driver as AddressLearned, to repeat them
        # only every address_retry_s.
        self._hints: dict[str, _Hint] = {}

    # --- reading

    def members(self) -> list[Member]:
        """Every member not yet forgotten, sorted by name."""
        return [self._members[name] for name in sorted(self._members)]

    def get(self, name: str) -> Member | None:
        return self._members.get(name)

    def alive(self) -> list[Member]:
        """ALIVE members, sorted by name (connected or not: see ``Member.connected``)."""
        return [m for m in self.members() if m.state is MemberState.ALIVE]

    def digest(self, now: float) -> tuple[Hearsay, ...]:
        """Our view for our own gossip; ages count only what we heard directly."""
        chosen = list(self._members.values())
        if len(chosen) > MAX_MEMBERS:
            # Receivers reject longer lists; the live and fresh matter most.
            rank = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2}
            chosen.sort(key=lambda m: (rank[m.state], -m.last_heard))
            chosen = chosen[:MAX_MEMBERS]
        return tuple(
            Hearsay(
                name=m.name,
                id=m.id,
                incarnation=m.incarnation,
                host=m.host,
                rpc_port=m.rpc_port,
                state=m.state,
                age_s=min(MAX_SECONDS, max(0.0, now - m.last_heard)),
            )
            for m in sorted(chosen, key=lambda m: m.name)
        )

    def next_deadline(self) -> float | None:
        """The earliest time at which :meth:`tick` would change something."""
        return min((_deadline(m, self.config) for m in self._members.values()), default=None)

    # --- feeding

    def heard_from(self, gossip: Gossip, *, peer_host: str, now: float) -> list[Event]:
        """Direct gossip from the member itself, over an authenticated connection."""
        if gossip.name == self.self_name:
            # Ourselves (a bootstrap address that is our own) or a name
            # collision; neither is a member. The driver compares ids and logs.
            return []
        host = gossip.host if gossip.host is not None else peer_host
        known = self._members.get(gossip.name)
        fresh = Member(
            name=gossip.name,
            id=gossip.id,
            incarnation=gossip.incarnation,
            host=host,
            rpc_port=gossip.rpc_port,
            http_port=gossip.http_port,
            mesh_id=gossip.mesh_id,
            state=MemberState.ALIVE,
            load=gossip.load,
            last_heard=now,
            state_since=now,
        )
        events: list[Event]
        if known is None:
            events = [MemberJoined(gossip.name)]
            self._members[gossip.name] = fresh
        else:
            order = _order(gossip.incarnation, gossip.id, known)
            if order < 0:
                # A superseded process: neither it nor its view counts.
                return []
            if order > 0:
                events = [MemberRestarted(gossip.name, known.incarnation, gossip.incarnation)]
                self._members[gossip.name] = fresh
            else:
                events = self._refresh(known, fresh)
        self._hints.pop(gossip.name, None)
        events.extend(self.hearsay(gossip.members, via=gossip.name, now=now))
        return events

    def _refresh(self, known: Member, fresh: Member) -> list[Event]:
        events: list[Event] = []
        if known.state is MemberState.ALIVE:
            # Keep when it became alive: the silence timer needs it.
            fresh = replace(fresh, state_since=known.state_since, last_vouched=known.last_vouched)
        elif known.state is MemberState.SUSPECT:
            events.append(MemberRefuted(known.name))
        else:
            # Same process, heard again: it outlived a partition.
            events.append(MemberJoined(known.name, rejoined=True))
        self._members[known.name] = fresh
        return events

    def hearsay(self, entries: Sequence[Hearsay], *, via: str, now: float) -> list[Event]:
        """What ``via`` says about the others. Never kills, never revives, never joins."""
        events: list[Event] = []
        for entry in entries:
            if entry.name in (self.self_name, via) or entry.state is not MemberState.ALIVE:
                continue
            heard_at = now - entry.age_s
            known = self._members.get(entry.name)
            if known is not None:
                order = _order(entry.incarnation, entry.id, known)
                if order < 0:
                    continue
                if order == 0:
                    events.extend(self._vouch(known, heard_at, via, now))
                    known = self._members[entry.name]
                    if known.connected or heard_at <= known.last_heard:
                        continue
            # Unknown, restarted elsewhere, or heard by them but not by us.
            if entry.age_s <= self.config.suspect_after_s:
                events.extend(self._learn(entry, via, now))
        return events

    def _vouch(self, known: Member, heard_at: float, via: str, now: float) -> list[Event]:
        if known.state is MemberState.DEAD:
            return []
        vouched = max(heard_at, known.last_vouched if known.last_vouched is not None else heard_at)
        if known.state is MemberState.ALIVE:
            if vouched != known.last_vouched:
                self._members[known.name] = replace(known, last_vouched=vouched)
            return []
        if heard_at <= known.state_since + self.config.hearsay_margin_s:
            # Heard before (or barely after) we began to suspect: no news.
            return []
        self._members[known.name] = replace(
            known,
            state=MemberState.ALIVE,
            state_since=now,
            last_vouched=vouched,
            reason="",
        )
        return [MemberRefuted(known.name, via=via)]

    def _learn(self, entry: Hearsay, via: str, now: float) -> list[Event]:
        hint = self._hints.get(entry.name)
        if (
            hint is not None
            and (hint.host, hint.rpc_port) == (entry.host, entry.rpc_port)
            and now - hint.told_at < self.config.address_retry_s
        ):
            return []
        if hint is None and len(self._hints) >= MAX_MEMBERS:
            # A peer that invents members cannot grow our memory without bound.
            return []
        self._hints[entry.name] = _Hint(entry.host, entry.rpc_port, now)
        return [AddressLearned(entry.name, entry.host, entry.rpc_port, via=via)]

    def connection_lost(self, name: str, *, now: float) -> list[Event]:
        """Our last connection to ``name`` dropped: suspect it at once.

        A SIGKILLed process's connections drop with it, so this is what makes
        death quick. Call it when the last link to the member is gone, not
        for each of several.
        """
        known = self._members.get(name)
        if known is None:
            return []
        if known.state is not MemberState.ALIVE:
            self._members[name] = replace(known, connected=False)
            return []
        reason = "connection lost"
        self._members[name] = replace(
            known, state=MemberState.SUSPECT, state_since=now, connected=False, reason=reason
        )
        return [MemberSuspected(name, reason)]

    def left(self, name: str, id: str, incarnation: int, *, now: float) -> list[Event]:
        """``name`` said it leaves (a drained node's ``leaving``): DEAD at once, not suspect.

        Only the process we know may say so: another id or incarnation (a
        stale goodbye, or one from before a restart) changes nothing.
        """
        known = self._members.get(name)
        if known is None or known.state is MemberState.DEAD:
            return []
        if (known.id, known.incarnation) != (id, incarnation):
            return []
        reason = "left the mesh"
        self._members[name] = replace(
            known, state=MemberState.DEAD, state_since=now, connected=False, reason=reason
        )
        return [MemberDied(name, reason)]

    def heard(self, name: str, id: str, *, at: float, now: float) -> list[Event]:
        """Any message from the process ``id`` of ``name`` arrived ``at``, over
        an authenticated connection: a call, an answer, a result, not only gossip.

        A member that answers is alive: an ALIVE one stays so (its silence
        timer restarts at ``at``), a SUSPECT one is refuted. A DEAD one needs
        its gossip to come back (its load and address come with it), and
        another process of the same name changes nothing.
        """
        known = self._members.get(name)
        if known is None or known.id != id or known.state is MemberState.DEAD:
            return []
        if at <= known.last_heard or at > now:
            return []
        if known.state is MemberState.ALIVE:
            self._members[name] = replace(known, last_heard=at)
            return []
        if at <= known.state_since:
            return []  # from before the suspicion began: no news
        self._members[name] = replace(
            known, state=MemberState.ALIVE, state_since=now, last_heard=at, reason=""
        )
        return [MemberRefuted(name)]

    def tick(self, now: float) -> list[Event]:
        """Apply the timeouts; call it at :meth:`next_deadline` or every interval."""
        config = self.config
        events: list[Event] = []
        for name in sorted(self._members):
            member = self._members[name]
            if now < _deadline(member, config):
                continue
            if member.state is MemberState.ALIVE:
                reason = f"no gossip for {now - _silent_since(member):.2f} s"
                self._members[name] = replace(
                    member, state=MemberState.SUSPECT, state_since=now, reason=reason
                )
                events.append(MemberSuspected(name, reason))
            elif member.state is MemberState.SUSPECT:
                reason = f"{member.reason}, then not heard for {now - member.state_since:.2f} s"
                self._members[name] = replace(
                    member, state=MemberState.DEAD, state_since=now, reason=reason
                )
                events.append(MemberDied(name, reason))
            else:
                del self._members[name]
                events.append(MemberForgotten(name))
        for name, hint in list(self._hints.items()):
            if now - hint.told_at >= config.forget_after_s:
                del self._hints[name]
        return events


def _silent_since(member: Member) -> float:
    """Since when nobody, we or others, has heard from it (or it was refuted)."""
    vouched = member.last_vouched if member.last_vouched is not None else member.last_heard
    return max(member.last_heard, vouched, member.state_since)


def _deadline(member: Member, config: MembershipConfig) -> float:
    """When the member's current state times out."""
    if member.state is MemberState.ALIVE:
        return _silent_since(member) + config.suspect_after_s
    if member.state is MemberState.SUSPECT:
        return member.state_since + config.dead_after_s
    return member.state_since + config.forget_after_s


def _order(incarnation: int, id: str, known: Member) -> int:
    """-1, 0 or 1 as ``(incarnation, id)`` is older, the same or newer than ``known``."""
    theirs = (incarnation, id)
    ours = (known.incarnation, known.id)
    return (theirs > ours) - (theirs < ours)
