"""Configuration: frozen dataclasses (:mod:`.settings`), and the one place that reads
TOML or the environment (:mod:`.loading`).

Values are resolved once, in this order (later wins): built-in defaults, the
TOML file given with ``--config``, ``EDGEMESH_*`` environment variables, then
command-line flags. Everything else receives its values from here; nothing
else in the package reads the environment.
"""

from mesh.config.loading import (
    ENV_PREFIX,
    GATEWAY_ENV_PREFIX,
    GATEWAY_SETTING_KEYS,
    MIN_MESH_KEY_BYTES,
    NODE_SETTING_KEYS,
    check_gateway_url,
    check_mesh_key,
    load_gateway_config,
    load_node_config,
    mesh_key_from,
    read_mesh_key,
    read_toml,
)
from mesh.config.settings import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RPC_PORT,
    BreakerConfig,
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
    bundled_models_dir,
)

__all__ = [
    "DEFAULT_GATEWAY_PORT",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_RPC_PORT",
    "ENV_PREFIX",
    "GATEWAY_ENV_PREFIX",
    "GATEWAY_SETTING_KEYS",
    "MIN_MESH_KEY_BYTES",
    "NODE_SETTING_KEYS",
    "BreakerConfig",
    "Emulation",
    "FallbackConfig",
    "GatewayClientConfig",
    "GatewayServerConfig",
    "HttpConfig",
    "MeshConfig",
    "NodeConfig",
    "RpcConfig",
    "RuntimeConfig",
    "WorkConfig",
    "bundled_models_dir",
    "check_gateway_url",
    "check_mesh_key",
    "load_gateway_config",
    "load_node_config",
    "mesh_key_from",
    "read_mesh_key",
    "read_toml",
]
