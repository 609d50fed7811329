"""Model versions: valid labels, their order, and which one a request gets."""

from __future__ import annotations

import pytest

from mesh.core.models.versions import (
    Version,
    check_version,
    choose_version,
    newest,
    next_version,
    version_key,
)
from mesh.errors import ConfigError, ModelNotFound

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.mark.parametrize("label", ["1", "12", "2024-06", "v2.1", "beta_3", "x" * 32])
def test_valid_labels(label: str) -> None:
    assert check_version(label) == label


@pytest.mark.parametrize("label", ["", ".1", "-1", "a/b", "1 ", "x" * 33, 1, None, "..", "ü"])
def test_invalid_labels_say_what_a_version_looks_like(label: object) -> None:
    with pytest.raises(ConfigError, match="is not a version; use 1 to 32 letters"):
        check_version(label)


ORDER = {
    "numbers by value": (["9", "10", "2"], ["2", "9", "10"]),
    "numbers after words": (["1", "beta", "alpha"], ["alpha", "beta", "1"]),
    "leading zeros are numbers": (["010", "9"], ["9", "010"]),
}


@pytest.mark.parametrize(("labels", "ordered"), ORDER.values(), ids=ORDER.keys())
def test_order(labels: list[str], ordered: list[str]) -> None:
    assert sorted(labels, key=version_key) == ordered


CHOICE = {
    "newest when not pinned": ([("1", A), ("2", B)], None, B),
    "newest by number, not text": ([("10", A), ("9", B)], None, A),
    "a pinned old version": ([("1", A), ("2", B)], "1", A),
    "a word label pinned": ([("1", A), ("beta", B)], "beta", B),
    "a word label is never the default": ([("1", A), ("beta", B)], None, A),
    "equal labels: the first listed (our own)": ([("2", A), ("2", B)], "2", A),
    "equal newest: the first listed": ([("2", A), ("1", C), ("2", B)], None, A),
}


@pytest.mark.parametrize(("held", "pinned", "sha"), CHOICE.values(), ids=CHOICE.keys())
def test_choose_version(held: list[tuple[str, str]], pinned: str | None, sha: str) -> None:
    versions = [Version(label, s) for label, s in held]
    assert choose_version("m", versions, pinned).sha256 == sha


def test_an_unknown_version_names_the_versions_served() -> None:
    versions = [Version("2", B), Version("1", A), Version("2", C)]
    with pytest.raises(ModelNotFound) as caught:
        choose_version("m", versions, "7")
    assert caught.value.message == "model 'm' has no version '7'; versions served: '1', '2'"


def test_no_versions_at_all() -> None:
    with pytest.raises(ModelNotFound, match="model 'm' has no version served here"):
        choose_version("m", [], None)
    assert newest([]) is None


NEXT = {
    "none yet": ([], "1"),
    "after the highest number": (["1", "3", "2"], "4"),
    "words do not count": (["beta", "2"], "3"),
    "only words": (["beta"], "1"),
}


@pytest.mark.parametrize(("labels", "label"), NEXT.values(), ids=NEXT.keys())
def test_next_version(labels: list[str], label: str) -> None:
    assert next_version(labels) == label
