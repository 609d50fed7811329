"""Which peer to pull a model from: the version wanted, the file, the peers best first.

Pure: the node hands in what live peers gossip they serve
(:class:`Offer`), and gets back :class:`Sources` (or None: nobody has it).
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.core.wire.model_transfer import ModelRef

__all__ = ["Offer", "Sources", "choose_sources"]


@dataclass(frozen=True, slots=True)
class Offer:
    """A live peer's gossip says it serves ``name`` (``version``, file ``sha256``)."""

    peer: str
    name: str
    version: str | None
    sha256: str
    # Its queued work in seconds: a busy peer is asked last.
    queued_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Sources:
    """The version to pull and the peers to try for it, best first."""

    version: str | None
    sha256: str
    peers: tuple[str, ...]


def _version_key(version: str | None) -> tuple[int, int, str]:
    # Numbers compare as numbers and are newer than any other label (as in
    # a model repository's numbered folders); a peer that gossips no
    # version is the oldest.
    if version is None:
        return (-1, 0, "")
    if version.isdigit():
        return (1, int(version), version)
    return (0, 0, version)


def choose_sources(ref: ModelRef, offers: list[Offer]) -> Sources | None:
    """Which file to pull for ``ref`` and from whom; None when no live peer offers it.

    A pinned version takes that version; else the newest one offered. Should
    peers disagree on a version's bytes, the sha256 most of them hold wins
    (then the smallest, so every node picks alike). Peers are tried least
    busy first, then by name.
    """
    matching = [
        o
        for o in offers
        if o.name == ref.name and (ref.version is None or o.version == ref.version)
    ]
    if not matching:
        return None
    newest = max(_version_key(o.version) for o in matching)
    matching = [o for o in matching if _version_key(o.version) == newest]
    counts: dict[str, int] = {}
    for offer in matching:
        counts[offer.sha256] = counts.get(offer.sha256, 0) + 1
    sha256 = min(counts, key=lambda sha: (-counts[sha], sha))
    chosen = sorted((o for o in matching if o.sha256 == sha256), key=lambda o: (o.queued_s, o.peer))
    return Sources(
        version=chosen[0].version,
        sha256=sha256,
        peers=tuple(dict.fromkeys(o.peer for o in chosen)),
    )
