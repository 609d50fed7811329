"""Node settings: defaults < TOML file < EDGEMESH_* environment < flags, each checked."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mesh.config import DEFAULT_RPC_PORT, bundled_models_dir, load_node_config
from mesh.errors import ConfigError

KEY = "k" * 32


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_suit_a_real_device() -> None:
    config = load_node_config({}, {})
    assert config.host == "0.0.0.0"
    assert config.port == DEFAULT_RPC_PORT
    assert config.mesh_key is None
    assert config.runtime.model_dirs == (bundled_models_dir(),)
    assert config.runtime.model_names is None


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    key_file = write(tmp_path / "mesh.key", KEY + "\n")
    toml = write(
        tmp_path / "node.toml",
        f"""
name = "from-file"
port = 7801
host = "127.0.0.1"
models = ["{tmp_path}"]
model = ["digits-small"]
mesh_key_file = "{key_file}"
intra_op_threads = 2
max_in_flight_per_connection = 10
log_format = "json"
""",
    )
    from_file = load_node_config({}, {}, toml)
    assert from_file.name == "from-file"
    assert from_file.port == 7801
    assert from_file.runtime.model_dirs == (tmp_path,)
    assert from_file.runtime.model_names == ("digits-small",)
    assert from_file.runtime.intra_op_threads == 2
    assert from_file.rpc.max_in_flight_per_connection == 10
    assert from_file.mesh_key == KEY.encode()
    assert from_file.log_format == "json"

    env = {"EDGEMESH_PORT": "7802", "EDGEMESH_NAME": "from-env", "EDGEMESH_MODEL": "a,b"}
    from_env = load_node_config({}, env, toml)
    assert (from_env.name, from_env.port) == ("from-env", 7802)
    assert from_env.runtime.model_names == ("a", "b")

    flags = {"port": "7803", "name": None, "model": ["c"]}
    from_flags = load_node_config(flags, env, toml)
    assert (from_flags.name, from_flags.port) == ("from-env", 7803)
    assert from_flags.runtime.model_names == ("c",)


def test_mesh_key_from_the_environment() -> None:
    config = load_node_config({}, {"EDGEMESH_MESH_KEY": f"  {KEY}  "})
    assert config.mesh_key == KEY.encode()


def test_key_file_wins_over_the_environment_key(tmp_path: Path) -> None:
    key_file = write(tmp_path / "k", "f" * 20)
    config = load_node_config({"mesh_key_file": str(key_file)}, {"EDGEMESH_MESH_KEY": KEY})
    assert config.mesh_key == b"f" * 20


@pytest.mark.parametrize(
    ("flags", "env", "fragment"),
    [
        ({"port": "70000"}, {}, "--port must be a port number"),
        ({"port": "seven"}, {}, "--port must be a port number"),
        ({}, {"EDGEMESH_PORT": "-1"}, "EDGEMESH_PORT must be a port number"),
        ({"intra_op_threads": "0"}, {}, "--intra-op-threads must be a positive integer"),
        ({"log_format": "xml"}, {}, "--log-format must be one of text, json"),
        ({"name": "  "}, {}, "--name must be a non-empty string"),
        ({}, {"EDGEMESH_MESH_KEY": "short"}, "at least 16"),
        ({"mesh_key_file": "/no/such/key"}, {}, "cannot read mesh key file"),
    ],
)
def test_bad_values_are_named(flags: dict[str, object], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_node_config(flags, env)
    assert fragment in caught.value.message


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_node_config({}, {}, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_node_config({}, {}, write(tmp_path / "bad.toml", "port = = 1"))
    with pytest.raises(ConfigError, match=r"unknown keys \['prot'\]"):
        load_node_config({}, {}, write(tmp_path / "typo.toml", "prot = 1"))
    with pytest.raises(ConfigError, match="port must be a port number"):
        load_node_config({}, {}, write(tmp_path / "type.toml", 'port = "x"'))


def test_membership_settings(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "mesh.toml",
        'peer = ["10.0.0.2:7700"]\nmdns = false\ninterface = ["10.0.0.1"]\ngossip_interval = 0.1\n',
    )
    config = load_node_config({"dead_after": "0.3", "mdns": None}, {}, toml)
    assert config.mesh.peers == ("10.0.0.2:7700",)
    assert config.mesh.mdns is False
    assert config.mesh.interfaces == ("10.0.0.1",)
    assert config.mesh.gossip_interval_s == 0.1
    assert config.mesh.dead_after_s == 0.3
    assert load_node_config({}, {"EDGEMESH_MDNS": "off"}).mesh.mdns is False
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_node_config({"peer": ["no-port"]}, {})
    with pytest.raises(ConfigError, match="positive number of seconds"):
        load_node_config({"gossip_interval": "0"}, {})
    with pytest.raises(ConfigError, match="at most 63 bytes"):
        load_node_config({"name": "n" * 64}, {})
    # Checked when the settings are read, by the same rule mDNS records meet.
    assert load_node_config({"interface": ["0:0::1"]}, {}).mesh.interfaces == ("::1",)
    with pytest.raises(ConfigError, match="'eth0' cannot be used: not an IP address"):
        load_node_config({"interface": ["eth0"]}, {})
    with pytest.raises(ConfigError, match="unspecified or multicast"):
        load_node_config({}, {"EDGEMESH_INTERFACE": "0.0.0.0"})


def test_work_sharing_settings_from_file_environment_and_flags(tmp_path: Path) -> None:
    assert load_node_config({}, {}).work.emulation is None
    assert load_node_config({}, {}).work.steal is True
    toml = write(tmp_path / "node.toml", "slots = 3\nsteal = false\nemulate_speed = 2\n")
    from_file = load_node_config({}, {}, toml)
    assert from_file.work.slots == 3
    assert from_file.work.steal is False
    assert from_file.work.emulation is not None
    # The reference service time defaults to 20 ms: a speed-2 device takes 10.
    assert from_file.work.emulation.service_s == pytest.approx(0.010)
    env = {"EDGEMESH_EMULATE_SERVICE_MS": "50", "EDGEMESH_STEAL": "yes"}
    from_env = load_node_config({}, env, toml)
    assert from_env.work.steal is True
    assert from_env.work.emulation is not None
    assert from_env.work.emulation.service_s == pytest.approx(0.025)
    flags = {"emulate_speed": "0.5", "slots": "1"}
    from_flags = load_node_config(flags, env, toml)
    assert from_flags.work.slots == 1
    assert from_flags.work.emulation is not None
    assert from_flags.work.emulation.to_status() == {"speed": 0.5, "service_ms": 50.0}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"emulate_speed": "0"}, "--emulate-speed must be a positive number"),
        ({"emulate_speed": "fast"}, "--emulate-speed must be a positive number"),
        ({"emulate_speed": "nan"}, "--emulate-speed must be a positive number"),
        ({"emulate_service_ms": "-1"}, "--emulate-service-ms must be a number >= 0"),
        ({"slots": "0"}, "--slots must be a positive integer"),
    ],
    ids=["zero-speed", "word-speed", "nan-speed", "negative-ms", "zero-slots"],
)
def test_bad_work_sharing_settings_say_what_was_expected(
    flags: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_node_config(flags, {})


# --- a local mesh on one machine (issue 20) ---------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "toml", "expected"),
    [
        # The README's own command: mDNS on loopback, advertising 127.0.0.1.
        ({"host": "127.0.0.1"}, {}, "", ("127.0.0.1",)),
        ({}, {"EDGEMESH_HOST": "127.0.0.1"}, "", ("127.0.0.1",)),
        ({}, {}, 'host = "localhost"', ("127.0.0.1",)),
        ({"host": "10.0.0.5"}, {}, "", ("10.0.0.5",)),
        # Every address, as a real device: every interface.
        ({}, {}, "", None),
        ({"host": "0.0.0.0"}, {}, "", None),
        # An interface given anywhere wins over the host.
        ({"host": "127.0.0.1", "interface": ["10.0.0.5"]}, {}, "", ("10.0.0.5",)),
        ({"host": "127.0.0.1"}, {"EDGEMESH_INTERFACE": "10.0.0.5"}, "", ("10.0.0.5",)),
        ({"host": "0.0.0.0"}, {}, 'interface = ["127.0.0.1"]', ("127.0.0.1",)),
    ],
)
def test_mdns_interfaces_follow_the_host(
    tmp_path: Path,
    flags: dict[str, object],
    env: dict[str, str],
    toml: str,
    expected: tuple[str, ...] | None,
) -> None:
    config = load_node_config(flags, env, write(tmp_path / "node.toml", toml))
    assert config.mesh.interfaces == expected


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({}, {}, socket.gethostname()),
        ({"port": "7700"}, {}, socket.gethostname()),
        ({"port": "7701"}, {}, f"{socket.gethostname()}-7701"),
        ({}, {"EDGEMESH_PORT": "7702"}, f"{socket.gethostname()}-7702"),
        # Port 0: the node adds the port it binds, once it has one.
        ({"port": "0"}, {}, socket.gethostname()),
    ],
)
def test_a_node_given_no_name_is_named_by_host_and_port(
    flags: dict[str, object], env: dict[str, str], expected: str
) -> None:
    config = load_node_config(flags, env)
    assert (config.name, config.name_from_host) == (expected, True)


def test_a_name_given_is_kept_whatever_the_port() -> None:
    config = load_node_config({"port": "7701", "name": "kitchen-pi"}, {})
    assert (config.name, config.name_from_host) == ("kitchen-pi", False)
    from_env = load_node_config({"port": "7701"}, {"EDGEMESH_NAME": "garage"})
    assert (from_env.name, from_env.name_from_host) == ("garage", False)
