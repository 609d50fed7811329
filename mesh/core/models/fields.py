"""Readers for the fields of a parsed table (a manifest entry, a model's wire map).

Each takes the table, the key and ``where`` (a phrase naming the table for the
message) and raises :class:`ConfigError` saying what was expected. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.errors import ConfigError

__all__ = ["quoted", "read_accuracy", "read_bool", "read_sha256", "read_string"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def read_string(
    table: Mapping[str, Any],
    key: str,
    where: str,
    default: str | None = None,
    example: str = "",
) -> str:
    """A string; missing or empty is an error unless ``default`` is given."""
    if key not in table:
        if default is not None:
            return default
        raise ConfigError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, str) or (default is None and not value):
        hint = f" (e.g. {example})" if example else ""
        raise ConfigError(f"{where}: key '{key}' must be a non-empty string{hint}, got {value!r}")
    return value


def read_sha256(table: Mapping[str, Any], where: str) -> str:
    """Key ``sha256``: 64 hex digits, lower-cased."""
    value = table.get("sha256")
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value.lower()):
        raise ConfigError(f"{where}: key 'sha256' must be 64 hex digits, got {value!r}")
    return value.lower()


def read_accuracy(table: Mapping[str, Any], where: str) -> float | None:
    """Key ``accuracy``: a number from 0 to 1, or None when absent."""
    value = table.get("accuracy")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: key 'accuracy' must be a number from 0 to 1, got {value!r}")
    return float(value)


def read_bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    """A true/false key; ``default`` when absent."""
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: key '{key}' must be true or false, got {value!r}")
    return value


def quoted(names: Iterable[str]) -> str:
    """``'a', 'b'`` for a message."""
    return ", ".join(f"'{n}'" for n in names)
