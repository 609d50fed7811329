"""The node's model store: the versions it serves, and how they change while it runs.

A :class:`ModelStore` wraps the node's :class:`~mesh.runtime.runtime.Runtime`
and keeps it in step with the model directories:

* :meth:`ModelStore.reload` rescans them (every ``reload_interval_s`` when
  watching, on SIGHUP, on the ``reload`` RPC). A new file or version folder
  starts serving; a removed one retires; a file replaced in place (same path,
  new sha256) becomes a new version, the next number after the name's highest,
  and the version it replaces retires. A file that fails to load is logged and
  whatever served before keeps serving.
* :meth:`ModelStore.install` adds a model that arrived from elsewhere (a peer,
  ``edgemesh models push``) to the first model directory, after checking its
  sha256 once more: a model never runs unverified.

Retiring is gentle: a retired version takes no new requests, but the ones
already resolved to its sha256 (queued or running here) still run on it; its
session is freed once ``in_use`` says none are left. Loading (hashing, building
sessions) happens on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mesh.core.models.signatures import ModelSpec, check_model_name
from mesh.core.models.versions import check_version, next_version
from mesh.errors import ConfigError, MeshError, ModelError
from mesh.runtime.loading import LoadedModel, load_file
from mesh.runtime.model_files import VERSION_FILE, ModelFile, find_model_files, model_store_dir
from mesh.runtime.runtime import Runtime

__all__ = ["ModelStore", "ReloadReport", "shas_by_name"]

log = logging.getLogger(__name__)

# While a retired version still has work, check this often whether it is done.
_FREE_CHECK_S = 0.1

# A file's identity on disk, cheap to read: a change means it must be hashed again.
_Stat = tuple[int, int, int]


@dataclass(frozen=True)
class ReloadReport:
    """What one reload changed (the ``reload`` RPC's answer)."""

    added: tuple[ModelSpec, ...] = ()
    retired: tuple[ModelSpec, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()  # (path, why)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack/JSON-friendly map: each model as name, version and sha256."""

        def short(spec: ModelSpec) -> dict[str, str]:
            return {"name": spec.name, "version": spec.version, "sha256": spec.sha256}

        return {
            "added": [short(s) for s in self.added],
            "retired": [short(s) for s in self.retired],
            "failed": [{"path": path, "error": why} for path, why in self.failed],
        }


@dataclass
class _Tracked:
    """A file the store serves, as it last saw it."""

    stat: _Stat
    model: LoadedModel


@dataclass
class _Scan:
    """What a scan found, worked out on a worker thread."""

    loaded: list[tuple[Path, _Stat, LoadedModel]] = field(default_factory=list)
    unchanged: list[tuple[Path, _Stat]] = field(default_factory=list)
    seen: set[Path] = field(default_factory=set)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # Files that failed to load, as they were: not tried again until they change.
    failed_stats: list[tuple[Path, _Stat]] = field(default_factory=list)


class ModelStore:
    """The versions a node serves, kept in step with its model directories.

    ``in_use(name, sha256)`` says whether requests given that version still
    wait or run here (a retired version is freed once it says no);
    ``on_change()`` is called after each change of what is served, or freed.
    Run :meth:`run` in the node's TaskGroup.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        interval_s: float = 0.0,
        in_use: Callable[[str, str], bool] = lambda name, sha256: False,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._runtime = runtime
        self._config = runtime.config
        self._interval_s = interval_s
        self._in_use = in_use
        self._on_change = on_change
        self._lock = asyncio.Lock()
        # run() wakes on this: a reload asked for, or a version retired.
        self._wake = asyncio.Event()
        self._reload_asked = False
        self._tracked: dict[Path, _Tracked] = {}
        # Files that failed to load, until they change (no error every scan).
        self._failed: dict[Path, _Stat] = {}
        # Names installed while running: served even when --model lists others.
        self._installed: set[str] = set()
        # For status(): reloads done, versions added and retired, files refused.
        self.counters = {"reloads": 0, "added": 0, "retired": 0, "load_failures": 0}
        self._retiring: list[LoadedModel] = []
        for model in runtime.serving():
            if model.path is not None:
                with contextlib.suppress(OSError):
                    self._tracked[_key(model.path)] = _Tracked(_stat(model.path), model)

    def attach(self, *, in_use: Callable[[str, str], bool], on_change: Callable[[], None]) -> None:
        """Set the callbacks once the node's work sharing exists (see the class doc)."""
        self._in_use = in_use
        self._on_change = on_change

    # --- what others read ------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        """The runtime the store changes."""
        return self._runtime

    def holding(self) -> list[ModelSpec]:
        """Every version served (name, version, sha256 and signature), by name."""
        return self._runtime.specs()

    def retiring(self) -> list[ModelSpec]:
        """Versions that take no new requests but still run what they were given."""
        return self._runtime.retired()

    def status(self) -> dict[str, Any]:
        """Versions served and retiring, the reload interval and counters, for ``status()``."""
        versions: dict[str, list[str]] = {}
        for spec in self._runtime.specs():
            versions.setdefault(spec.name, []).append(spec.version)
        return {
            "versions": versions,
            "retiring": [
                {"name": s.name, "version": s.version, "sha256": s.sha256}
                for s in self._runtime.retired()
            ],
            "reload_interval_s": self._interval_s,
            **self.counters,
        }

    def file_of(self, sha256: str) -> Path | None:
        """The on-disk file of a version this node serves with this sha256; None if none."""
        for model in self._runtime.serving():
            if model.spec.sha256 == sha256 and model.path is not None:
                return model.path
        return None

    # --- changing what is served -------------------------------------------------

    def request_reload(self) -> None:
        """Ask :meth:`run` to reload soon; safe to call from a signal handler."""
        self._reload_asked = True
        self._wake.set()

    async def reload(self) -> ReloadReport:
        """Rescan the model directories and serve what they now hold (see the module doc)."""
        async with self._lock:
            known = {**self._failed, **{path: t.stat for path, t in self._tracked.items()}}
            scan = await asyncio.to_thread(
                _scan, self._config, known, self._sha_of, frozenset(self._installed)
            )
            report = self._apply(scan)
            self.counters["reloads"] += 1
            self.counters["load_failures"] += len(report.failed)
        for spec in report.added:
            log.info("reload: serving %s version %s (%s)", spec.name, spec.version, spec.sha256)
        for spec in report.retired:
            log.info("reload: retiring %s version %s", spec.name, spec.version)
        for path, why in report.failed:
            log.error("reload: cannot serve %s: %s; what served before still does", path, why)
        return report

    async def install(
        self, path: Path, *, name: str, version: str | None, sha256: str
    ) -> ModelSpec:
        """Serve the model file at ``path`` as ``name`` (``version``, else the next number).

        The file must have ``sha256`` (checked again here, on the bytes that
        are loaded). It is moved to ``<model store>/<name>/<version>/model.onnx``
        (:func:`~mesh.runtime.model_files.model_store_dir`)
        and served from there. ModelError when it cannot be (bad name or
        version, wrong sha256, a version of that label with another file,
        onnxruntime refuses it); the file at ``path`` is then removed.
        """
        try:
            check_model_name(name)
            if version is not None:
                check_version(version, "install: version")
        except ConfigError as exc:
            _remove(path)
            raise ModelError(exc.message) from exc
        async with self._lock:
            try:
                return await self._install(path, name=name, version=version, sha256=sha256)
            finally:
                _remove(path)

    async def _install(
        self, path: Path, *, name: str, version: str | None, sha256: str
    ) -> ModelSpec:
        served = {s.version: s for s in self._runtime.versions(name)}
        if version is not None and version in served:
            if served[version].sha256 == sha256:
                return served[version]  # already here: installing twice is a no-op
            raise ModelError(
                f"model '{name}' version '{version}' is already served with sha256"
                f" {served[version].sha256}, not {sha256}; give another version"
            )
        # Versions on disk count too, served or not (--model, a broken file):
        # a label taken there would clash at the next start.
        on_disk = await asyncio.to_thread(_labels_on_disk, self._config.model_dirs, name)
        if version is not None and version in on_disk:
            raise ModelError(
                f"model '{name}' version '{version}' is already in the model directories"
                " (another file); give another version"
            )
        label = version or next_version([*served, *on_disk])
        dest = model_store_dir(self._config) / name / label / VERSION_FILE
        if dest.exists():
            raise ModelError(f"{dest} already exists; give another version than '{label}'")
        model = await asyncio.to_thread(self._place, path, dest, name, label, sha256)
        self._tracked[_key(dest)] = _Tracked(_stat(dest), model)
        self._installed.add(name)
        displaced = self._runtime.add(model)
        self.counters["added"] += 1
        if displaced is not None:
            self._retire(displaced)
            self.counters["retired"] += 1
        self._on_change()
        log.info("installed %s version %s (%s) at %s", name, label, sha256, dest)
        return model.spec

    def _place(self, path: Path, dest: Path, name: str, label: str, sha256: str) -> LoadedModel:
        """Verify and load ``path``, then move it to ``dest``; on a worker thread."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Moved first to a hidden name beside its destination (same file
        # system, so the last step is an atomic rename), then loaded from
        # there: a scan never sees a file that is not yet verified.
        staged = dest.parent.parent / f".incoming-{uuid.uuid4().hex}.onnx"
        shutil.move(path, staged)
        try:
            model = load_file(
                ModelFile(name, staged, None, label), self._config, expect_sha256=sha256
            )
            os.replace(staged, dest)
        except BaseException:
            _remove(staged)
            with contextlib.suppress(OSError):
                dest.parent.rmdir()  # the version folder made for it, if still empty
            raise
        return dataclasses.replace(model, path=dest)

    def _sha_of(self, path: Path) -> str | None:
        tracked = self._tracked.get(path)
        return None if tracked is None else tracked.model.spec.sha256

    def _apply(self, scan: _Scan) -> ReloadReport:
        """Carry out a scan on the loop: add what is new, retire what went or changed."""
        added: list[ModelSpec] = []
        retired: list[ModelSpec] = []
        for path, stat in scan.unchanged:
            self._tracked[path].stat = stat
        self._failed = {p: s for p, s in self._failed.items() if p in scan.seen}
        for path, stat in scan.failed_stats:
            if path in self._tracked:
                self._tracked[path].stat = stat  # what served before still does
            else:
                self._failed[path] = stat
        for path, stat, model in scan.loaded:
            old = self._tracked.get(path)
            if old is not None and old.model.spec.sha256 == model.spec.sha256:
                old.stat = stat
                continue
            if old is not None or model.spec.version in {
                s.version for s in self._runtime.versions(model.spec.name)
            }:
                # A file replaced in place, or a second file claiming a label
                # already served: a new version, numbered after the others.
                labels = [s.version for s in self._runtime.versions(model.spec.name)]
                spec = dataclasses.replace(model.spec, version=next_version(labels))
                model = dataclasses.replace(model, spec=spec)
            if old is not None:
                retired += self._retire_tracked(path)
            displaced = self._runtime.add(model)
            if displaced is not None:
                retired.append(displaced.spec)
                self._retire(displaced)
            self._tracked[path] = _Tracked(stat, model)
            added.append(model.spec)
        for path in [p for p in self._tracked if p not in scan.seen]:
            retired += self._retire_tracked(path)
        if added or retired:
            self._on_change()
        self.counters["added"] += len(added)
        self.counters["retired"] += len(retired)
        return ReloadReport(tuple(added), tuple(retired), tuple(scan.failed))

    def _retire_tracked(self, path: Path) -> list[ModelSpec]:
        tracked = self._tracked.pop(path)
        spec = tracked.model.spec
        model = self._runtime.retire(spec.name, spec.version)
        if model is None:
            return []
        self._retire(model)
        return [spec]

    def _retire(self, model: LoadedModel) -> None:
        self._retiring.append(model)
        self._wake.set()  # run() frees it once done

    def _free_idle(self) -> None:
        """Free retired versions with nothing left to run."""
        done = [m for m in self._retiring if not self._in_use(m.spec.name, m.spec.sha256)]
        if not done:
            return
        for model in done:
            self._retiring.remove(model)
            self._runtime.free(model)
            log.info("freed %s version %s", model.spec.name, model.spec.version)
        self._on_change()

    async def run(self) -> None:
        """Reload every ``interval_s`` (0: only when asked), free what retired; until cancelled."""
        loop = asyncio.get_running_loop()
        every = self._interval_s
        next_scan = loop.time() + every if every > 0 else None
        while True:
            deadline = next_scan
            if self._retiring:
                soon = loop.time() + _FREE_CHECK_S
                deadline = soon if deadline is None else min(deadline, soon)
            self._wake.clear()
            if not self._reload_asked:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._wake.wait()
            self._free_idle()
            due = next_scan is not None and loop.time() >= next_scan
            if self._reload_asked or due:
                self._reload_asked = False
                if next_scan is not None:
                    next_scan = loop.time() + every
                try:
                    await self.reload()
                except MeshError as exc:
                    log.error("reload failed: %s", exc.message)


class _Version(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def sha256(self) -> str: ...


def shas_by_name(specs: Iterable[_Version]) -> dict[str, frozenset[str]]:
    """Model name → the sha256 of each of its versions in ``specs`` (specs or gossip holdings)."""
    out: dict[str, set[str]] = {}
    for spec in specs:
        out.setdefault(spec.name, set()).add(spec.sha256)
    return {name: frozenset(shas) for name, shas in out.items()}


def _scan(
    config: Any,
    known: dict[Path, _Stat],
    sha_of: Callable[[Path], str | None],
    installed: frozenset[str],
) -> _Scan:
    """Find the model files and load the new or changed ones; on a worker thread.

    With ``--model`` names, only those are served, and the ``installed`` ones
    (a node told to serve a model keeps serving it).
    """
    scan = _Scan()
    cands = find_model_files(config.model_dirs, strict=False)
    if config.model_names is not None:
        wanted = {*config.model_names, *installed}
        cands = [c for c in cands if c.name in wanted]
    for cand in _one_file_per_version(cands, known, scan):
        path = _key(cand.path)
        try:
            stat = _stat(path)
        except OSError as exc:
            scan.failed.append((str(path), exc.strerror or str(exc)))
            continue
        scan.seen.add(path)
        if known.get(path) == stat:
            continue
        try:
            model = load_file(cand, config)
        except ModelError as exc:
            scan.failed.append((str(path), exc.message))
            scan.failed_stats.append((path, stat))
            continue
        if sha_of(path) == model.spec.sha256:
            scan.unchanged.append((path, stat))  # touched, not changed
            continue
        scan.loaded.append((path, stat, model))
    return scan


def _one_file_per_version(
    cands: list[ModelFile], known: dict[Path, _Stat], scan: _Scan
) -> list[ModelFile]:
    """Of files claiming one (name, version), the one already known (else the
    first); the others are refused, as the node would refuse them at start."""
    chosen: dict[tuple[str, str], ModelFile] = {}
    for cand in cands:
        key = (cand.name, cand.version)
        other = chosen.get(key)
        if other is None or (_key(cand.path) in known and _key(other.path) not in known):
            chosen[key] = cand
    for cand in cands:
        keep = chosen[(cand.name, cand.version)]
        if keep is cand:
            continue
        path = _key(cand.path)
        scan.seen.add(path)
        try:
            stat = _stat(path)
        except OSError:
            continue
        if known.get(path) == stat:
            continue  # refused before, unchanged: said once
        scan.failed.append(
            (
                str(path),
                f"{keep.path} is already model '{cand.name}' version '{cand.version}';"
                " give this file another version",
            )
        )
        scan.failed_stats.append((path, stat))
    return [c for c in cands if chosen[(c.name, c.version)] is c]


def _labels_on_disk(dirs: Iterable[Path], name: str) -> set[str]:
    """The version labels of ``name`` in ``dirs``: its files' and its version folders'."""
    dirs = list(dirs)
    labels = {c.version for c in find_model_files(dirs, strict=False) if c.name == name}
    folder = Path(dirs[0]) / name
    if folder.is_dir():
        labels |= {p.name for p in folder.iterdir() if p.is_dir()}
    return labels


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _stat(path: Path) -> _Stat:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
