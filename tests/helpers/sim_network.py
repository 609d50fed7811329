"""The simulation's world: its scenario, its event clock and its unreliable network.

What :class:`~tests.helpers.sim.Sim` runs on, kept apart from the nodes'
part (the schedulers and the I/O played for them, in :mod:`tests.helpers.sim`):

* the scenario: the nodes (:class:`NodeSpec`), the :class:`Network`, the
  client :class:`Arrival` s and the node :class:`Death` s, and the seed;
* one event clock (``t``, "true" time) and each node's own :class:`Clock`
  (an offset and a bounded drift);
* the network (:meth:`SimNetwork._send`): a message is lost, duplicated or
  delayed, and so reordered, as drawn, or kept in order per link; a node
  that learned a peer died sends it nothing, and a dead node, or one that
  knows the sender died (its connection is closed), receives nothing.

No I/O, no asyncio, no wall clock: the scenario and its seed fix the run.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

__all__ = ["Arrival", "Clock", "Death", "Network", "NodeSpec", "Scenario", "SimNetwork"]


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: its speed, slots, and clock (``offset_s + t * (1 + drift)``)."""

    speed: float = 1.0
    slots: int = 1
    offset_s: float = 0.0
    drift: float = 0.0


@dataclass(frozen=True, slots=True)
class Network:
    """How messages and deaths behave; each bound is ``(low, high)``, drawn uniformly."""

    loss: float = 0.0  # chance a message is lost
    duplicate: float = 0.0  # chance a notification or call request arrives twice
    latency_s: tuple[float, float] = (0.0005, 0.0005)  # one way; a spread reorders
    detect_s: tuple[float, float] = (0.05, 0.05)  # from a death to each peer's peer_lost
    gossip_s: float = 0.05
    steal_timeout_s: float = 5.0  # as work_sharing's
    service_jitter: float = 0.0  # a run takes its service time times 1 ± this
    # In order per link (src → dst), as on one TCP connection; False lets
    # any message overtake any other.
    fifo: bool = False


@dataclass(frozen=True, slots=True)
class Arrival:
    """``count`` client requests sent to node ``node`` at ``at``."""

    at: float
    node: int
    count: int = 1
    deadline_s: float | None = None


@dataclass(frozen=True, slots=True)
class Death:
    """Node ``node`` dies at ``at`` (for good: SIGKILL)."""

    node: int
    at: float


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a run depends on; ``seed`` draws each message's fate."""

    nodes: tuple[NodeSpec, ...]
    arrivals: tuple[Arrival, ...]
    deaths: tuple[Death, ...] = ()
    network: Network = Network()
    lease_min_s: float = 0.5
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Clock:
    offset_s: float
    rate: float

    def local(self, t: float) -> float:
        return self.offset_s + t * self.rate

    def true(self, local: float) -> float:
        return (local - self.offset_s) / self.rate


class SimNetwork:
    """The event clock and the network of one run of a :class:`Scenario`;
    :class:`~tests.helpers.sim.Sim` adds the nodes."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.net = scenario.network
        self.rng = random.Random(scenario.seed)
        self.t = 0.0
        self.names = [f"n{i}" for i in range(len(scenario.nodes))]
        self.specs = dict(zip(self.names, scenario.nodes, strict=True))
        self.clocks = {n: Clock(s.offset_s, 1.0 + s.drift) for n, s in self.specs.items()}
        self.dead: dict[str, float] = {}
        self.knows_dead: dict[str, set[str]] = {n: set() for n in self.names}
        self.trace: list[str] = []
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._link_free: dict[tuple[str, str], float] = {}  # FIFO: last arrival per link

    def now(self, name: str) -> float:
        """``name``'s clock now."""
        return self.clocks[name].local(self.t)

    def alive(self) -> list[str]:
        return [n for n in self.names if n not in self.dead]

    # --- the clock -----------------------------------------------------------------------------

    def _at(self, when: float, event: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._order), event))

    def _log(self, text: str) -> None:
        self.trace.append(f"{self.t:9.4f} {text}")

    # --- the network ---------------------------------------------------------------------------

    def _send(
        self, src: str, dst: str, deliver: Callable[[], None], *, duplicates: bool = True
    ) -> None:
        """A message from ``src`` to ``dst``: lost, late, or twice, as drawn."""
        if dst in self.knows_dead[src]:
            return  # no link any more: the node does not even try
        if self.rng.random() < self.net.loss:
            return
        copies = 2 if duplicates and self.rng.random() < self.net.duplicate else 1
        for _ in range(copies):
            at = self.t + self.rng.uniform(*self.net.latency_s)
            if self.net.fifo:
                at = self._link_free[(src, dst)] = max(at, self._link_free.get((src, dst), 0.0))
            self._at(at, partial(self._deliver, src, dst, deliver))

    def _deliver(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
        if dst in self.dead or src in self.knows_dead[dst]:
            return  # a closed connection delivers nothing more
        deliver()
