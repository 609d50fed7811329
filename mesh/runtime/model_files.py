"""Finding model files on disk: model directories, their manifests, and which files to serve.

A model directory holds models in three layouts, side by side:

* ``DIR/name.onnx``: model ``name``, version ``"1"``;
* ``DIR/name/<version>/model.onnx`` (Triton's layout; any one ``*.onnx`` in
  the version folder will do when there is no ``model.onnx``): that version;
* ``DIR/manifest.toml``, listing files with their version, sha256 and
  signature (see ``models/manifest.toml``), served under the manifest's names.

A name may have several versions, and each (name, version) pair must be
unique. Nothing here loads a model: :mod:`mesh.runtime.loading` does that.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.config import RuntimeConfig, bundled_models_dir
from mesh.core.models.manifest import ManifestEntry, parse_manifest
from mesh.core.models.signatures import check_model_name
from mesh.core.models.versions import FIRST_VERSION, check_version
from mesh.errors import ConfigError, ModelError, ModelIntegrityError

__all__ = [
    "MANIFEST_NAME",
    "NO_MODEL_STORE",
    "VERSION_FILE",
    "ModelFile",
    "find_model_files",
    "model_store_dir",
    "read_manifest",
    "read_model_bytes",
    "select_model_files",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.toml"

# The file name of a version in a version folder (``DIR/name/<version>/model.onnx``).
VERSION_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelFile:
    """A model file found on disk, before it is loaded."""

    name: str
    path: Path
    entry: ManifestEntry | None  # None: not in any manifest
    version: str = FIRST_VERSION


def find_model_files(dirs: Sequence[Path], *, strict: bool = True) -> list[ModelFile]:
    """Every model file of every directory.

    ``strict`` (at start): ConfigError on a bad directory or manifest, or on
    two files claiming one (name, version). Not strict (a reload, while the
    node serves): a bad directory or manifest is logged and skipped, so that
    one bad file does not stop the others, and every file is returned, two
    claiming one version included: the caller knows which one serves.
    """
    found: dict[tuple[str, str], ModelFile] = {}
    everything: list[ModelFile] = []
    for directory in dirs:
        try:
            cands = _find_in_dir(Path(directory))
        except ConfigError as exc:
            if strict:
                raise
            log.error("reload: skipping model directory %s: %s", directory, exc.message)
            continue
        except OSError as exc:
            # Changed under our feet while scanning (strict scans fail on
            # their own ConfigError first); try again at the next reload.
            if strict:
                raise
            log.error("reload: skipping model directory %s: %s", directory, exc)
            continue
        everything += cands
        for cand in cands:
            key = (cand.name, cand.version)
            other = found.get(key)
            if other is None:
                found[key] = cand
                continue
            problem = (
                f"two models are named '{cand.name}', both version '{cand.version}':"
                f" {other.path} and {cand.path}; rename one or remove its directory from"
                " runtime.model_dirs"
            )
            if strict:
                raise ConfigError(problem)
    return list(found.values()) if strict else everything


def _find_in_dir(directory: Path) -> list[ModelFile]:
    if not directory.is_dir():
        raise ConfigError(f"model directory {directory} does not exist or is not a directory")
    manifest = directory / MANIFEST_NAME
    entries = read_manifest(manifest) if manifest.is_file() else {}
    cands = [ModelFile(e.name, directory / e.file, e, e.version) for e in entries.values()]
    listed = {(directory / e.file).resolve() for e in entries.values()}
    taken = {c.name for c in cands}
    cands += _version_folders(directory, listed)
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


def _version_folders(directory: Path, listed: set[Path]) -> list[ModelFile]:
    """The ``name/<version>/*.onnx`` files of ``directory``: more versions of any
    name, a manifest's too (a version of one name and label only once)."""
    cands: list[ModelFile] = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()):
        # Hidden folders hold files being written (a model arriving); never serve those.
        if folder.name.startswith("."):
            continue
        name = folder.name
        try:
            check_model_name(name)
        except ConfigError:
            continue
        for version_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                version = check_version(version_dir.name)
            except ConfigError:
                continue
            path = _version_file(version_dir)
            if path is None or path.resolve() in listed:
                continue
            cands.append(ModelFile(name, path, None, version))
    return cands


def _version_file(version_dir: Path) -> Path | None:
    """The model file of one version folder: ``model.onnx``, else its only ``*.onnx``."""
    preferred = version_dir / VERSION_FILE
    if preferred.is_file():
        return preferred
    files = sorted(p for p in version_dir.glob("*.onnx") if p.is_file())
    if len(files) == 1:
        return files[0]
    if files:
        log.error(
            "skipping version folder %s: it holds %d .onnx files and no %s; keep one",
            version_dir,
            len(files),
            VERSION_FILE,
        )
    return None


NO_MODEL_STORE = (
    "this node serves only the bundled models and has nowhere to keep a new one;"
    " start it with --model-store DIR (or --models DIR) to take pulled and pushed models"
)


def model_store_dir(config: RuntimeConfig) -> Path:
    """The directory that pulled and pushed models go into; ModelError when there is none.

    ``store_dir`` when set (config loading puts it first in ``model_dirs``),
    else the first model directory unless it is the bundled one: those files
    ship with edgemesh, possibly inside a read-only installed package, and a
    model written there would outlive the node's own settings.
    """
    if config.store_dir is not None:
        return config.store_dir
    first = Path(config.model_dirs[0])
    if first.resolve() == bundled_models_dir().resolve():
        raise ModelError(NO_MODEL_STORE)
    return first


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
    """The files of the models in ``names`` (all when None); ConfigError for an unknown name."""
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
    wanted = set(names)
    # Every version of a named model is served.
    return [c for c in cands if c.name in wanted]


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
