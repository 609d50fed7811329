"""The settings that bound what strangers and big requests may cost (issue 19).

Part of :mod:`mesh.config.loading`: it lists the keys (each a TOML key, an
``EDGEMESH_`` variable and a flag, like every setting) and turns the
resolved values into ``RpcConfig`` and ``HttpConfig`` fields. Each key is
checked by the parser ``loading`` hands in, so the messages match every
other setting's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "GATEWAY_HTTP_KEYS",
    "NODE_HTTP_KEYS",
    "RPC_KEYS",
    "http_limits",
    "limit_settings",
    "rpc_limits",
]

Parser = Callable[[str, object], object]

# Setting key -> (RpcConfig field, kind): "int" a positive integer, "s" positive
# seconds, "rate" a positive number.
RPC_KEYS: dict[str, tuple[str, str]] = {
    "preauth_max_bytes": ("preauth_max_bytes", "int"),
    "handshake_timeout": ("handshake_timeout_s", "s"),
    "max_unauthenticated": ("max_unauthenticated", "int"),
    "max_unauthenticated_per_source": ("max_unauthenticated_per_source", "int"),
    "auth_failure_burst": ("auth_failure_burst", "int"),
    "auth_failures_per_s": ("auth_failures_per_s", "rate"),
    "idle_timeout": ("idle_timeout_s", "s"),
    "message_timeout": ("message_timeout_s", "s"),
    "max_bytes_in_flight": ("max_bytes_in_flight", "int"),
}
# Setting key -> HttpConfig field: a node's carry http_ (its RPC has the plain
# names); the gateway serves only HTTP, so its keys are plain.
NODE_HTTP_KEYS: dict[str, tuple[str, str]] = {
    "http_max_json_bytes": ("max_json_bytes", "int"),
    "http_idle_timeout": ("idle_timeout_s", "s"),
    "http_body_timeout": ("body_timeout_s", "s"),
}
GATEWAY_HTTP_KEYS: dict[str, tuple[str, str]] = {
    "max_json_bytes": ("max_json_bytes", "int"),
    "idle_timeout": ("idle_timeout_s", "s"),
    "body_timeout": ("body_timeout_s", "s"),
    "max_bytes_in_flight": ("max_bytes_in_flight", "int"),
}


def limit_settings(
    keys: Mapping[str, tuple[str, str]],
    *,
    positive_int: Parser,
    positive_seconds: Parser,
    positive_number: Parser,
) -> dict[str, Parser]:
    """``keys`` as entries of loading's settings table."""
    parsers = {"int": positive_int, "s": positive_seconds, "rate": positive_number}
    return {key: parsers[kind] for key, (_, kind) in keys.items()}


def _fields(settings: Mapping[str, Any], keys: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    return {field: settings[key] for key, (field, _) in keys.items() if key in settings}


def rpc_limits(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The RpcConfig fields the resolved ``settings`` give (the rest keep their defaults)."""
    return _fields(settings, RPC_KEYS)


def http_limits(settings: Mapping[str, Any], keys: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The HttpConfig fields the resolved ``settings`` give, by ``keys`` (a node's or the
    gateway's); a node's HTTP shares its RPC budget, so max_bytes_in_flight carries over."""
    fields = _fields(settings, keys)
    if keys is NODE_HTTP_KEYS and "max_bytes_in_flight" in settings:
        fields["max_bytes_in_flight"] = settings["max_bytes_in_flight"]
    return fields
