"""Model versions: what a version label may be, their order, and which one a request gets.

A model is a name plus versions; a version has a label (``"1"``, ``"2"``,
``"2024-06"``...) and is identified by the sha256 of its file. A request may
pin a label; otherwise it gets the newest version. Labels that are numbers
compare as numbers (``"10"`` is newer than ``"9"``), and every numeric label
is newer than any other label, which compare as text: a model repository
numbers its versions (Triton's layout), and a label such as ``"beta"`` is
served only when asked for by name or when no numbered version exists.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mesh.errors import ConfigError, ModelNotFound

__all__ = [
    "FIRST_VERSION",
    "Version",
    "check_version",
    "choose_version",
    "newest",
    "next_version",
    "version_key",
]

# The version of a model file found without one (``DIR/name.onnx``).
FIRST_VERSION = "1"

_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,31}")


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a model: its label and the sha256 of its file."""

    label: str
    sha256: str


def check_version(label: object, where: str = "version") -> str:
    """``label`` if it is a valid version label, else ConfigError saying what one looks like."""
    if not isinstance(label, str) or not _VERSION_RE.fullmatch(label):
        raise ConfigError(
            f"{where}: {label!r} is not a version; use 1 to 32 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit (e.g. '1', '2', '2024-06')"
        )
    return label


def version_key(label: str) -> tuple[int, int, str]:
    """Sort key: numbers by value and after every other label, which sort as text."""
    if label.isdigit():
        return (1, int(label), label)
    return (0, 0, label)


def newest(versions: Iterable[Version]) -> Version | None:
    """The newest of ``versions`` (see :func:`version_key`); None when there are none."""
    return max(versions, key=lambda v: version_key(v.label), default=None)


def next_version(labels: Iterable[str]) -> str:
    """The number after the highest numeric label in ``labels`` (``"1"`` when there is none)."""
    numbers = [int(label) for label in labels if label.isdigit()]
    return str(max(numbers, default=0) + 1)


def choose_version(model: str, versions: Iterable[Version], pinned: str | None) -> Version:
    """The version of ``model`` a request gets: ``pinned`` when given, else the newest.

    Among versions of equal label (two nodes that numbered different files
    alike), the one listed first wins: list this node's own first. Raises
    ModelNotFound naming the versions that exist when ``pinned`` is not one
    of them, or when there are none.
    """
    held = list(dict.fromkeys(versions))
    if not held:
        raise ModelNotFound(f"model '{model}' has no version served here")
    if pinned is None:
        return max(held, key=lambda v: version_key(v.label))
    for version in held:
        if version.label == pinned:
            return version
    ordered = sorted(held, key=lambda v: version_key(v.label))
    labels = ", ".join(f"'{label}'" for label in dict.fromkeys(v.label for v in ordered))
    raise ModelNotFound(f"model '{model}' has no version '{pinned}'; versions served: {labels}")
