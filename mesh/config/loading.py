"""Resolving settings: defaults < TOML file < environment < flags, each value checked.

The only place in the package that reads TOML or the environment. A node
reads ``EDGEMESH_<KEY>``; the gateway ``EDGEMESH_GATEWAY_<KEY>``. The
settings tables here name each key's parser; the parsers are in :mod:`.values`.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mesh.config.credentials import client_credentials, http_security
from mesh.config.escalation import escalation_rules
from mesh.config.limits import (
    GATEWAY_HTTP_KEYS,
    NODE_HTTP_KEYS,
    RPC_KEYS,
    http_limits,
    limit_settings,
    rpc_limits,
)
from mesh.config.settings import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RPC_PORT,
    Emulation,
    FallbackConfig,
    GatewayClientConfig,
    GatewayServerConfig,
    HttpConfig,
    MeshConfig,
    NodeConfig,
    RpcConfig,
    RuntimeConfig,
    WorkConfig,
)
from mesh.config.values import (
    address_list,
    choice,
    flag,
    ip_list,
    node_name,
    non_negative_int,
    non_negative_number,
    non_negative_seconds,
    nonempty_text,
    port_number,
    positive_int,
    positive_number,
    positive_seconds,
    string_list,
)

# Re-exported: mesh.config takes it from here, beside the loaders that use it.
from mesh.config.values import check_gateway_url as check_gateway_url
from mesh.core.wire.addresses import default_node_name, mdns_interfaces
from mesh.errors import ConfigError

# --- resolving settings from file, environment and flags ----------------------

MIN_MESH_KEY_BYTES = 16
ENV_PREFIX = "EDGEMESH_"


# Every node setting: its key (TOML key, flag dest, and EDGEMESH_<KEY> upper-cased),
# and how its value is checked.
_NODE_SETTINGS: dict[str, Callable[[str, object], object]] = {
    "name": node_name,
    "host": nonempty_text,
    "port": port_number,
    "models": string_list,
    "model": string_list,
    "mesh_key_file": nonempty_text,
    "client_key_file": nonempty_text,
    "seal": flag,
    "intra_op_threads": positive_int,
    "per_model_concurrency": positive_int,
    "executor_threads": positive_int,
    "reload_interval": non_negative_seconds,
    "max_message_bytes": positive_int,
    "max_in_flight_per_connection": positive_int,
    "ready_file": nonempty_text,
    "peer": address_list,
    "mdns": flag,
    "interface": ip_list,
    "gossip_interval": positive_seconds,
    "suspect_after": positive_seconds,
    "dead_after": positive_seconds,
    "forget_after": positive_seconds,
    "slots": positive_int,
    "steal": flag,
    "fetch_models": flag,
    "model_store": nonempty_text,
    "emulate_speed": positive_number,
    "emulate_service_ms": non_negative_number,
    "http_port": port_number,
    "http_host": nonempty_text,
    "http_token_file": nonempty_text,
    "tls_cert": nonempty_text,
    "tls_key": nonempty_text,
    "gateway": check_gateway_url,
    "gateway_timeout": positive_seconds,
    "gateway_token_file": nonempty_text,
    "gateway_ca_file": nonempty_text,
    "default_deadline_ms": positive_number,
    "queue_cap": positive_int,
    "escalate": escalation_rules,
    "log_level": choice("debug", "info", "warning", "error"),
    "log_format": choice("text", "json"),
    "drain_timeout": non_negative_seconds,
    **limit_settings(
        {**RPC_KEYS, **NODE_HTTP_KEYS},
        positive_int=positive_int,
        positive_seconds=positive_seconds,
        positive_number=positive_number,
    ),
}
NODE_SETTING_KEYS = tuple(_NODE_SETTINGS)


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError names the file and what is wrong."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def read_mesh_key(path: Path) -> bytes:
    """The mesh key stored in ``path`` (surrounding whitespace ignored)."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read mesh key file {path}: {exc.strerror or exc}") from None
    return check_mesh_key(key, f"mesh key file {path}")


def check_mesh_key(key: bytes, source: str) -> bytes:
    """Refuse keys too short to resist guessing."""
    if len(key) < MIN_MESH_KEY_BYTES:
        raise ConfigError(
            f"{source} holds {len(key)} bytes; a mesh key needs at least {MIN_MESH_KEY_BYTES} "
            "(make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def mesh_key_from(*, key_file: str | None, environ: Mapping[str, str]) -> bytes | None:
    """The mesh key from a key file, else from ``EDGEMESH_MESH_KEY``, else None."""
    if key_file is not None:
        return read_mesh_key(Path(key_file).expanduser())
    from_env = environ.get(ENV_PREFIX + "MESH_KEY")
    if from_env:
        return check_mesh_key(from_env.strip().encode(), "EDGEMESH_MESH_KEY")
    return None


def _resolve(
    known: Mapping[str, Callable[[str, object], object]],
    env_prefix: str,
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> dict[str, object]:
    """Checked settings: the TOML file, then ``env_prefix``-variables, then flags.

    Each value is checked by its parser in ``known``, which names where it
    came from in any error; unknown TOML keys are refused (a typo must not
    pass silently).
    """
    settings: dict[str, object] = {}
    if config_file is not None:
        table = read_toml(config_file)
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(
                f"config file {config_file}: unknown keys {unknown}; known: {', '.join(known)}"
            )
        for key, value in table.items():
            settings[key] = known[key](f"{config_file}: {key}", value)
    for key, parse in known.items():
        env_name = env_prefix + key.upper()
        if env_name in environ:
            settings[key] = parse(env_name, environ[env_name])
    for key, value in flags.items():
        if value is not None and key in known:
            settings[key] = known[key](f"--{key.replace('_', '-')}", value)
    return settings


def load_node_config(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> NodeConfig:
    """Resolve a NodeConfig: defaults < TOML file < EDGEMESH_* environment < flags.

    ``flags`` holds only the flags the user gave (None means not given).
    """
    settings = _resolve(_NODE_SETTINGS, ENV_PREFIX, flags, environ, config_file)
    return _build_node_config(settings, environ)


def _runtime_config(settings: Mapping[str, Any]) -> RuntimeConfig:
    """Where models come from and how they run: the same keys for a node and the gateway."""
    defaults = RuntimeConfig()
    model_dirs = (
        tuple(Path(d).expanduser() for d in settings.get("models", ())) or defaults.model_dirs
    )
    store = settings.get("model_store")
    store_dir = None if store is None else Path(store).expanduser()
    if store_dir is not None:
        # First: installs land there, and it is scanned like the others.
        model_dirs = (store_dir, *(d for d in model_dirs if d != store_dir))
    return RuntimeConfig(
        model_dirs=model_dirs,
        store_dir=store_dir,
        model_names=settings.get("model") or None,
        intra_op_threads=settings.get("intra_op_threads", defaults.intra_op_threads),
        per_model_concurrency=settings.get("per_model_concurrency", defaults.per_model_concurrency),
        executor_threads=settings.get("executor_threads", defaults.executor_threads),
        # A node's key only (the gateway's settings have no reload_interval).
        reload_interval_s=settings.get("reload_interval", defaults.reload_interval_s),
    )


def _build_node_config(settings: Mapping[str, Any], environ: Mapping[str, str]) -> NodeConfig:
    runtime = _runtime_config(settings)
    defaults_rpc = RpcConfig()
    rpc = RpcConfig(
        max_message_bytes=settings.get("max_message_bytes", defaults_rpc.max_message_bytes),
        max_in_flight_per_connection=settings.get(
            "max_in_flight_per_connection", defaults_rpc.max_in_flight_per_connection
        ),
        seal=settings.get("seal", defaults_rpc.seal),
        **rpc_limits(settings),
    )
    defaults = NodeConfig()
    host = settings.get("host", defaults.host)
    defaults_mesh = MeshConfig()
    mesh = MeshConfig(
        mdns=settings.get("mdns", defaults_mesh.mdns),
        # Without --interface, mDNS follows --host: one address bound, one advertised.
        interfaces=mdns_interfaces(host, settings.get("interface") or None),
        peers=settings.get("peer", ()),
        gossip_interval_s=settings.get("gossip_interval", defaults_mesh.gossip_interval_s),
        suspect_after_s=settings.get("suspect_after", defaults_mesh.suspect_after_s),
        dead_after_s=settings.get("dead_after", defaults_mesh.dead_after_s),
        forget_after_s=settings.get("forget_after", defaults_mesh.forget_after_s),
    )
    emulation = None
    if "emulate_speed" in settings or "emulate_service_ms" in settings:
        reference = Emulation()
        emulation = Emulation(
            speed=settings.get("emulate_speed", reference.speed),
            service_ms=settings.get("emulate_service_ms", reference.service_ms),
        )
    work = WorkConfig(
        slots=settings.get("slots"), steal=settings.get("steal", True), emulation=emulation
    )
    ready_file = settings.get("ready_file")
    gateway = None
    if "gateway" in settings:
        gateway = GatewayClientConfig(
            url=settings["gateway"],
            timeout_s=settings.get("gateway_timeout", GatewayClientConfig.timeout_s),
            **client_credentials(settings, "gateway"),
        )
    elif "gateway_token_file" in settings or "gateway_ca_file" in settings:
        raise ConfigError("gateway_token_file and gateway_ca_file need a gateway URL (--gateway)")
    port = settings.get("port", defaults.port)
    mesh_key = mesh_key_from(key_file=settings.get("mesh_key_file"), environ=environ)
    name = settings.get("name")
    return NodeConfig(
        name=_default_node_name(port) if name is None else name,
        name_from_host=name is None,
        host=host,
        port=port,
        mesh_key=mesh_key,
        client_key=_client_key(settings, mesh_key),
        runtime=runtime,
        rpc=rpc,
        mesh=mesh,
        work=work,
        http=HttpConfig(
            port=settings.get("http_port"),
            max_body_bytes=rpc.max_message_bytes,
            host=settings.get("http_host"),
            **http_security(settings),
            **http_limits(settings, NODE_HTTP_KEYS),
        ),
        gateway=gateway,
        fallback=FallbackConfig(
            default_deadline_ms=settings.get(
                "default_deadline_ms", defaults.fallback.default_deadline_ms
            ),
            queue_cap=settings.get("queue_cap", defaults.fallback.queue_cap),
        ),
        escalation=settings.get("escalate", ()),
        ready_file=None if ready_file is None else Path(ready_file),
        log_level=settings.get("log_level", defaults.log_level),
        log_format=settings.get("log_format", defaults.log_format),
        drain_timeout_s=settings.get("drain_timeout", defaults.drain_timeout_s),
        fetch_models=settings.get("fetch_models", defaults.fetch_models),
    )


def _client_key(settings: Mapping[str, Any], mesh_key: bytes | None) -> bytes | None:
    """The key for clients only (--client-key-file); it needs a mesh key beside it."""
    path = settings.get("client_key_file")
    if path is None:
        return None
    if mesh_key is None:
        raise ConfigError(
            "client_key_file needs a mesh key (--mesh-key-file): an open node has no "
            "members to keep clients apart from"
        )
    key = read_mesh_key(Path(path).expanduser())
    if key == mesh_key:
        raise ConfigError("client_key_file holds the mesh key itself; give clients their own key")
    return key


def _default_node_name(port: int) -> str:
    """The hostname, made unique by the port; with port 0 the node adds the port it binds."""
    hostname = socket.gethostname()
    if port == 0:
        return hostname
    return default_node_name(hostname, port, default_port=DEFAULT_RPC_PORT)


# --- the gateway (`edgemesh gateway`) ---------------------------------------------

# The gateway's environment variables carry their own prefix, so a node and
# a gateway started from one shell (EDGEMESH_PORT, ...) do not share settings.
GATEWAY_ENV_PREFIX = "EDGEMESH_GATEWAY_"


_GATEWAY_SETTINGS: dict[str, Callable[[str, object], object]] = {
    "name": node_name,
    "host": nonempty_text,
    "port": port_number,
    "models": string_list,
    "model": string_list,
    "intra_op_threads": positive_int,
    "per_model_concurrency": positive_int,
    "executor_threads": positive_int,
    "max_body_bytes": positive_int,
    "upstream": check_gateway_url,
    "upstream_timeout": positive_seconds,
    "upstream_max_in_flight": positive_int,
    "upstream_token_file": nonempty_text,
    "upstream_ca_file": nonempty_text,
    "http_token_file": nonempty_text,
    "tls_cert": nonempty_text,
    "tls_key": nonempty_text,
    "slots": positive_int,
    "queue_cap": non_negative_int,
    "emulate_service_ms": non_negative_number,
    "ready_file": nonempty_text,
    "log_level": choice("debug", "info", "warning", "error"),
    "log_format": choice("text", "json"),
    "drain_timeout": non_negative_seconds,
    **limit_settings(
        GATEWAY_HTTP_KEYS,
        positive_int=positive_int,
        positive_seconds=positive_seconds,
        positive_number=positive_number,
    ),
}
GATEWAY_SETTING_KEYS = tuple(_GATEWAY_SETTINGS)


def load_gateway_config(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None = None,
) -> GatewayServerConfig:
    """Resolve a GatewayServerConfig: defaults < TOML < EDGEMESH_GATEWAY_* < flags.

    ``flags`` holds only the flags the user gave (None means not given).
    """
    settings = _resolve(_GATEWAY_SETTINGS, GATEWAY_ENV_PREFIX, flags, environ, config_file)
    return _build_gateway_config(settings)


def _build_gateway_config(settings: Mapping[str, Any]) -> GatewayServerConfig:
    runtime = _runtime_config(settings)
    http = HttpConfig(
        port=settings.get("port", DEFAULT_GATEWAY_PORT),
        max_body_bytes=settings.get("max_body_bytes", DEFAULT_MAX_MESSAGE_BYTES),
        **http_security(settings),
        **http_limits(settings, GATEWAY_HTTP_KEYS),
    )
    upstream = None
    if "upstream" in settings:
        client = GatewayClientConfig(url=settings["upstream"])
        upstream = GatewayClientConfig(
            url=client.url,
            timeout_s=settings.get("upstream_timeout", client.timeout_s),
            max_in_flight=settings.get("upstream_max_in_flight", client.max_in_flight),
            **client_credentials(settings, "upstream"),
        )
    elif any(key.startswith("upstream_") for key in settings):
        raise ConfigError(
            "upstream_timeout, upstream_max_in_flight, upstream_token_file and "
            "upstream_ca_file need an upstream URL"
        )
    emulation = None
    if "emulate_service_ms" in settings:
        emulation = Emulation(speed=1.0, service_ms=settings["emulate_service_ms"])
    defaults = GatewayServerConfig()
    ready_file = settings.get("ready_file")
    return GatewayServerConfig(
        name=settings.get("name", defaults.name),
        host=settings.get("host", defaults.host),
        runtime=runtime,
        http=http,
        upstream=upstream,
        slots=settings.get("slots"),
        queue_cap=settings.get("queue_cap", defaults.queue_cap),
        emulation=emulation,
        ready_file=None if ready_file is None else Path(ready_file),
        log_level=settings.get("log_level", defaults.log_level),
        log_format=settings.get("log_format", defaults.log_format),
        drain_timeout_s=settings.get("drain_timeout", defaults.drain_timeout_s),
    )
