"""The limits are settings like any other: flag, TOML key and EDGEMESH_ variable;
and the gateway applies the HTTP ones, since it serves the same HTTP face."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesh.config import HttpConfig, load_gateway_config, load_node_config
from mesh.errors import ConfigError
from tests.helpers.gateway import gateway_config, running_gateway


def test_node_limits_from_file_environment_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(
        "handshake_timeout = 2.5\npreauth_max_bytes = 4096\nmax_bytes_in_flight = 1000000\n"
        "http_max_json_bytes = 2048\nauth_failures_per_s = 0.5\n"
    )
    env = {"EDGEMESH_MAX_UNAUTHENTICATED_PER_SOURCE": "7", "EDGEMESH_HTTP_BODY_TIMEOUT": "3"}
    flags = {"idle_timeout": "90", "handshake_timeout": "1"}
    config = load_node_config(flags, env, toml)
    rpc, http = config.rpc, config.http
    assert rpc.handshake_timeout_s == 1.0  # the flag wins over the file
    assert rpc.preauth_max_bytes == 4096
    assert rpc.max_unauthenticated_per_source == 7
    assert rpc.auth_failures_per_s == 0.5
    assert rpc.idle_timeout_s == 90.0
    assert rpc.max_bytes_in_flight == 1_000_000
    assert http.max_json_bytes == 2048
    assert http.body_timeout_s == 3.0
    # A node's HTTP bodies share its RPC budget.
    assert http.max_bytes_in_flight == 1_000_000
    defaults = load_node_config({}, {})
    assert defaults.rpc.preauth_max_bytes == 8192
    assert defaults.http.max_json_bytes == 1024 * 1024


def test_gateway_limits() -> None:
    config = load_gateway_config(
        {"max_json_bytes": "4096", "body_timeout": "2"}, {"EDGEMESH_GATEWAY_IDLE_TIMEOUT": "9"}
    )
    assert (config.http.max_json_bytes, config.http.body_timeout_s) == (4096, 2.0)
    assert config.http.idle_timeout_s == 9.0


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"handshake_timeout": "0"}, "--handshake-timeout must be a positive number of seconds"),
        ({"preauth_max_bytes": "lots"}, "--preauth-max-bytes must be a positive integer"),
        ({"auth_failures_per_s": "-1"}, "--auth-failures-per-s must be a positive number"),
        ({"http_max_json_bytes": "0"}, "--http-max-json-bytes must be a positive integer"),
    ],
)
def test_bad_limits_are_named(flags: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_node_config(flags, {})


async def test_the_gateway_fails_a_lying_body_in_time() -> None:
    http = HttpConfig(port=0, body_timeout_s=0.5, idle_timeout_s=0.5)
    async with running_gateway(gateway_config(http=http)) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            b"POST /v2/models/digits-small/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 500\r\n\r\n{"
        )
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
