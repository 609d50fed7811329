"""How each setting's value is checked: the parsers of :mod:`mesh.config.loading`'s tables.

Every parser takes ``(key, value)``, where ``key`` names where the value
came from (a TOML key with its file, an ``EDGEMESH_`` variable or a flag),
and ``value`` is what that source holds: TOML brings ints, floats, booleans
and lists, the environment and flags bring text. A parser returns the
checked value or raises ConfigError naming ``key``, what it got and what
was expected. Kept apart from loading, which holds the settings tables and
builds the config dataclasses, so that each stays short; nothing here reads
a file or the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import urlsplit

from mesh.core.wire.addresses import host_ip, parse_address
from mesh.errors import ConfigError

__all__ = [
    "address_list",
    "check_gateway_url",
    "choice",
    "flag",
    "ip_list",
    "node_name",
    "non_negative_int",
    "non_negative_number",
    "non_negative_seconds",
    "nonempty_text",
    "port_number",
    "positive_int",
    "positive_number",
    "positive_seconds",
    "string_list",
]


def _integer(key: str, value: object, expected: str) -> int:
    """An int from TOML (int) or the environment and flags (decimal text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise ConfigError(f"{key} must be {expected}, got {value!r}")


def positive_int(key: str, value: object) -> int:
    """An integer > 0 (a count or a size in bytes)."""
    number = _integer(key, value, "a positive integer")
    if number <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return number


def port_number(key: str, value: object) -> int:
    """A TCP port, 0..65535 (0: the system picks one)."""
    number = _integer(key, value, "a port number 0..65535")
    if not 0 <= number <= 65535:
        raise ConfigError(f"{key} must be a port number 0..65535, got {value!r}")
    return number


def positive_seconds(key: str, value: object) -> float:
    """A finite number of seconds > 0."""
    expected = "a positive number of seconds"
    number = _number(key, value, expected)
    if number <= 0:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    return number


def _number(key: str, value: object, expected: str) -> float:
    """A finite float from TOML (int or float) or text; else ConfigError saying ``expected``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{key} must be {expected}, got {value!r}") from None
    if number != number or number == float("inf"):
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    return number


def positive_number(key: str, value: object) -> float:
    """A finite number > 0 (a speed, a rate, milliseconds)."""
    number = _number(key, value, "a positive number")
    if number <= 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}")
    return number


def non_negative_number(key: str, value: object) -> float:
    """A finite number >= 0."""
    number = _number(key, value, "a number >= 0")
    if number < 0:
        raise ConfigError(f"{key} must be a number >= 0, got {value!r}")
    return number


def non_negative_seconds(key: str, value: object) -> float:
    """A finite number of seconds >= 0."""
    expected = "a number of seconds >= 0"
    number = _number(key, value, expected)
    if number < 0:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    return number


def flag(key: str, value: object) -> bool:
    """A boolean: TOML true/false, or 1/0, true/false, yes/no, on/off as text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def nonempty_text(key: str, value: object) -> str:
    """A string with something in it, surrounding whitespace stripped."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def node_name(key: str, value: object) -> str:
    """A node's name: printable text of at most 63 bytes."""
    name = nonempty_text(key, value)
    # The name is an mDNS instance name (one DNS label) and shows up in logs.
    if len(name.encode()) > 63 or not name.isprintable():
        raise ConfigError(f"{key} must be printable and at most 63 bytes, got {value!r}")
    return name


def choice(*choices: str) -> Callable[[str, object], str]:
    """A parser that accepts one of ``choices`` (case-insensitive) and returns it lower-cased."""

    def parse(key: str, value: object) -> str:
        text = nonempty_text(key, value).lower()
        if text not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        return text

    return parse


def string_list(key: str, value: object) -> tuple[str, ...]:
    """A list of non-empty strings: a TOML array, or text split on commas and os.pathsep."""
    if isinstance(value, str):
        items = [part for part in value.replace(os.pathsep, ",").split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return tuple(nonempty_text(key, item) for item in items)


def address_list(key: str, value: object) -> tuple[str, ...]:
    """A list of HOST:PORT addresses, each one parsed to check it."""
    addresses = string_list(key, value)
    for address in addresses:
        try:
            parse_address(address)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return addresses


def ip_list(key: str, value: object) -> tuple[str, ...]:
    """A list of unicast IP addresses, normalised (an interface's name is refused)."""
    checked: list[str] = []
    for text in string_list(key, value):
        try:
            checked.append(host_ip(text))
        except ValueError as exc:
            # (An interface's name, eth0, is the usual slip.)
            raise ConfigError(
                f"{key}: {text!r} cannot be used: {exc}; give an IP address of this "
                "machine, not an interface's name"
            ) from None
    return tuple(checked)


def check_gateway_url(key: str, value: object) -> str:
    """An http(s) URL with a host, without a trailing slash; ConfigError otherwise."""
    text = nonempty_text(key, value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsing the port is what checks it
    except ValueError as exc:
        raise ConfigError(f"{key} is not a valid URL ({exc}): {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{key} must be an http:// or https:// URL with a host, "
            f"like http://gateway.example:8000; got {value!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{key} must not have a query or fragment, got {value!r}")
    return text.rstrip("/")


def non_negative_int(key: str, value: object) -> int:
    """An integer >= 0."""
    number = _integer(key, value, "an integer >= 0")
    if number < 0:
        raise ConfigError(f"{key} must be an integer >= 0, got {value!r}")
    return number
