"""Finding model files on disk: model directories, their manifests, and which files to serve.

A model directory holds ``*.onnx`` files and, optionally, a ``manifest.toml``
that lists some of them with their sha256 and signature (see
``models/manifest.toml``). Files the manifest lists are served under the
manifest's names; any other ``*.onnx`` file is served under its file stem.
Nothing here loads a model: :mod:`mesh.runtime.loading` does that.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.core.models.manifest import ManifestEntry, parse_manifest
from mesh.core.models.signatures import check_model_name
from mesh.errors import ConfigError, ModelError, ModelIntegrityError

__all__ = [
    "MANIFEST_NAME",
    "ModelFile",
    "find_model_files",
    "read_manifest",
    "read_model_bytes",
    "select_model_files",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.toml"


@dataclass(frozen=True)
class ModelFile:
    """A model file found on disk, before it is loaded."""

    name: str
    path: Path
    entry: ManifestEntry | None  # None: not in any manifest


def find_model_files(dirs: Sequence[Path]) -> list[ModelFile]:
    """Every model file of every directory; ConfigError on a bad dir or a duplicate name."""
    found: dict[str, ModelFile] = {}
    for directory in dirs:
        for cand in _find_in_dir(Path(directory)):
            other = found.get(cand.name)
            if other is not None:
                raise ConfigError(
                    f"two models are named '{cand.name}': {other.path} and {cand.path};"
                    " rename one or remove its directory from runtime.model_dirs"
                )
            found[cand.name] = cand
    return list(found.values())


def _find_in_dir(directory: Path) -> list[ModelFile]:
    if not directory.is_dir():
        raise ConfigError(f"model directory {directory} does not exist or is not a directory")
    manifest = directory / MANIFEST_NAME
    entries = read_manifest(manifest) if manifest.is_file() else {}
    cands = [ModelFile(e.name, directory / e.file, e) for e in entries.values()]
    listed = {(directory / e.file).resolve() for e in entries.values()}
    taken = {c.name for c in cands}
    for path in sorted(directory.glob("*.onnx")):
        if not path.is_file() or path.resolve() in listed:
            continue
        name = path.stem
        try:
            check_model_name(name)
        except ConfigError as exc:
            log.error("skipping model file %s: %s; rename the file", path, exc.message)
            continue
        if name in taken:
            raise ConfigError(
                f"{path} would be served as '{name}', but {manifest} already lists a"
                f" model of that name; rename the file or list it in the manifest"
            )
        cands.append(ModelFile(name, path, None))
    return cands


def read_manifest(path: Path) -> dict[str, ManifestEntry]:
    """The entries of one ``manifest.toml``; ConfigError names the file and the problem."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return parse_manifest(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def select_model_files(cands: list[ModelFile], names: tuple[str, ...] | None) -> list[ModelFile]:
    """Only the files named in ``names`` (all when None); ConfigError for an unknown name."""
    if names is None:
        return cands
    by_name = {c.name: c for c in cands}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        available = ", ".join(f"'{n}'" for n in sorted(by_name)) or "none"
        raise ConfigError(
            # Said as the flag a user typed (TOML key `model`, EDGEMESH_MODEL).
            f"--model {', '.join(repr(n) for n in unknown)}: no model directory has it"
            f" (see --models); available models: {available}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def read_model_bytes(path: Path, *, missing_is_integrity: bool) -> bytes:
    """A model file's bytes. A listed file that is missing is an integrity failure."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        if missing_is_integrity:
            raise ModelIntegrityError(
                f"{path} is listed in its manifest but does not exist"
            ) from exc
        raise ModelError(f"{path} disappeared while loading") from exc
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
