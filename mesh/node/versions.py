"""Which version of a model a request gets, as this node knows the mesh.

:class:`MeshVersions` keeps the versions this node's runtime serves and those
its live peers gossip (name, label, sha256), and resolves a request's model
and optional version to the sha256 the owner then schedules it under (see
:func:`mesh.core.models.versions.choose_version`). Every request asks twice
(placement, then submit) and the answer changes only when the mesh's
versions do, so answers are remembered until then.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.core.membership.peers import ModelHolding
from mesh.core.models.versions import Version, choose_version, version_key
from mesh.runtime.runtime import Runtime

__all__ = ["MeshVersions"]

# Resolutions remembered at most: model names and versions come from clients.
_RESOLVED_CAP = 1024


class MeshVersions:
    """This node's versions and its live peers', and the version each request gets."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._peers: dict[str, tuple[ModelHolding, ...]] = {}
        self._resolved: dict[tuple[str, str | None], str | None] = {}

    def peer(self, name: str, holdings: tuple[ModelHolding, ...]) -> None:
        """What a live peer's gossip says it serves."""
        if self._peers.get(name) != holdings:
            self._peers[name] = holdings
            self._resolved.clear()

    def peer_gone(self, name: str) -> None:
        """A peer died, left or restarted: its versions no longer count."""
        if self._peers.pop(name, None) is not None:
            self._resolved.clear()

    def changed(self) -> None:
        """This node's runtime serves other versions now."""
        self._resolved.clear()

    def resolve(self, model: str, version: str | None) -> str | None:
        """The sha256 of the version of ``model`` a request gets (``version``,
        else the newest), among this node's versions and its live peers'.

        None when no node in the mesh has ``model`` (the scheduler or the
        gateway then says what to do). ModelNotFound naming the versions
        served when ``version`` is not one of them.
        """
        key = (model, version)
        if key in self._resolved:
            return self._resolved[key]
        held = [*self._local(model), *self._remote(model)]
        sha = None if not held else choose_version(model, held, version).sha256
        if len(self._resolved) < _RESOLVED_CAP:
            self._resolved[key] = sha
        return sha

    def labels(self, model: str) -> list[str]:
        """The labels of every version of ``model`` here or on a live peer, oldest first."""
        labels = {v.label for v in (*self._local(model), *self._remote(model))}
        return sorted(labels, key=version_key)

    def _local(self, model: str) -> list[Version]:
        # Listed first: among equal labels, this node's own file wins.
        return [Version(s.version, s.sha256) for s in self._runtime.versions(model)]

    def _remote(self, model: str) -> Iterable[Version]:
        return (
            Version(h.version, h.sha256)
            for holdings in self._peers.values()
            for h in holdings
            if h.name == model and h.version is not None
        )
