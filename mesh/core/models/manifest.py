"""The model manifest (``manifest.toml``): which files a model directory promises.

Pure: :mod:`mesh.runtime.model_files` reads the TOML; this module checks what
it says. An entry names a model's file, version and sha256 and may declare its
signature, which loading then holds the model file to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.core.models.fields import quoted, read_accuracy, read_bool, read_sha256, read_string
from mesh.core.models.signatures import TensorSpec, check_model_name, parse_tensor_list
from mesh.core.models.versions import check_version
from mesh.core.policy.escalation import EscalationRule, parse_rule
from mesh.errors import ConfigError

__all__ = ["ManifestEntry", "parse_manifest"]


@dataclass(frozen=True)
class ManifestEntry:
    """One ``[models.<name>]`` table of a manifest, validated.

    ``inputs``/``outputs`` are None when the manifest does not declare them;
    the model file's own signature is then used as it is.
    """

    name: str
    version: str
    file: str
    sha256: str
    description: str = ""
    accuracy: float | None = None
    compute_only: bool = False
    inputs: tuple[TensorSpec, ...] | None = None
    outputs: tuple[TensorSpec, ...] | None = None
    # Joint inference: where this model's unsure answers go (None: nowhere).
    escalate: EscalationRule | None = None


_ENTRY_REQUIRED = ("version", "file", "sha256")
_ENTRY_KEYS = frozenset(
    {*_ENTRY_REQUIRED, "description", "accuracy", "compute_only", "inputs", "outputs", "escalate"}
)


def parse_manifest(data: Mapping[str, Any]) -> dict[str, ManifestEntry]:
    """Validate a parsed ``manifest.toml`` and return its entries by model name.

    Strict inside ``[models.*]`` (an unknown key is most likely a typo, and a
    typo in ``compute_only`` or ``sha256`` must not pass silently). Other
    top-level tables such as ``[dataset]`` belong to other tools and are left
    alone. Raises :class:`ConfigError` naming the model and key.
    """
    models = data.get("models")
    if not isinstance(models, Mapping):
        raise ConfigError("manifest: expected a [models.<name>] table for each model")
    entries: dict[str, ManifestEntry] = {}
    files: dict[str, str] = {}
    for name, table in models.items():
        entry = _parse_entry(str(name), table)
        if entry.file in files:
            raise ConfigError(
                f"manifest: models '{files[entry.file]}' and '{name}' both use file '{entry.file}'"
            )
        files[entry.file] = entry.name
        entries[entry.name] = entry
    return entries


def _parse_entry(name: str, table: object) -> ManifestEntry:
    where = f"manifest model '{name}'"
    try:
        check_model_name(name)
    except ConfigError as exc:
        raise ConfigError(f"manifest: {exc.message}") from exc
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - _ENTRY_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {quoted(unknown)};"
            f" allowed keys: {quoted(sorted(_ENTRY_KEYS))}"
        )
    missing = [k for k in _ENTRY_REQUIRED if k not in table]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {quoted(missing)}")
    inputs = table.get("inputs")
    outputs = table.get("outputs")
    return ManifestEntry(
        name=name,
        # Checked as every version label is: it travels in gossip and URLs.
        version=check_version(
            read_string(table, "version", where, example='version = "1"'), f"{where}, key 'version'"
        ),
        file=_file(table, where),
        sha256=read_sha256(table, where),
        description=read_string(table, "description", where, default=""),
        accuracy=read_accuracy(table, where),
        compute_only=read_bool(table, "compute_only", where, default=False),
        inputs=None if inputs is None else parse_tensor_list(inputs, f"{where}, key 'inputs'"),
        outputs=None if outputs is None else parse_tensor_list(outputs, f"{where}, key 'outputs'"),
        escalate=None
        if table.get("escalate") is None
        else parse_rule(name, table["escalate"], f"{where}, key 'escalate'"),
    )


def _file(table: Mapping[str, Any], where: str) -> str:
    value = read_string(table, "file", where, example='file = "model.onnx"')
    parts = value.split("/")
    # The file must stay inside the model directory the manifest describes
    # (checked on the string: core does not touch pathlib or the disk).
    if (
        value.startswith("/")
        or "\\" in value
        or any(p in ("", ".", "..") for p in parts)
        or not value.endswith(".onnx")
        or parts[-1] == ".onnx"
    ):
        raise ConfigError(
            f"{where}: key 'file' must be a relative path to a .onnx file inside the"
            f" model directory, got {value!r}"
        )
    return value
