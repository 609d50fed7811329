"""Bearer tokens on the HTTP side (issue 19): a node's --http-port and the gateway.

Real gateways and nodes in this event loop on 127.0.0.1, asked with aiohttp
and tritonclient. Without the token every route but /v2/health/live is 401
with ``WWW-Authenticate: Bearer`` and a typed body, before routing (so an
unknown route is 401 too, not 404); the right token works as before. Also
here: error texts that must not show the gateway's URL, and where a keyed
node's HTTP API listens when it checks no token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from mesh.config import GatewayClientConfig, HttpConfig, load_node_config
from mesh.errors import ConfigError, ModelNotFound
from mesh.node.http_face import claim_ports
from mesh.node.starting import advert
from mesh.runtime.runtime import Runtime
from mesh.sdk.client import MeshClient
from tests.helpers import KEY
from tests.helpers.gateway import gateway_config, gateway_runtime, running_gateway
from tests.helpers.nodes import node_config, running_node
from tests.helpers.tls import token_file

pytestmark = pytest.mark.timeout(60)

Digits = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
TOKEN = "s3cret-token-for-tests-0123456789"
PROTECTED = [
    # Near the open route, but not it.
    ("GET", "/v2/health/live/"),
    ("GET", "/v2/health%2Flive"),
    ("POST", "/v2/health/live"),
    ("GET", "/v2"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models/digits-small"),
    ("GET", "/v2/models/digits-small/ready"),
    ("POST", "/v2/models/digits-small/infer"),
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/no/such/route"),
]


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with gateway_runtime(concurrency=1) as loaded:
        yield loaded


def infer_body(x: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }


async def ask(
    port: int,
    method: str,
    path: str,
    *,
    authorization: str | None = None,
    body: Any = None,
) -> tuple[int, dict[str, Any], Any]:
    headers = {} if authorization is None else {"Authorization": authorization}
    if body is None and method == "POST":
        body = {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers
        ) as response,
    ):
        raw = await response.read()
        return response.status, dict(response.headers), json.loads(raw) if raw else None


def assert_refused(status: int, headers: dict[str, Any], body: Any, *, wrong: bool) -> None:
    assert status == 401, (status, body)
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm="), challenge
    assert ('error="invalid_token"' in challenge) == wrong
    assert body["code"] == "AuthError"
    assert "bearer token" in body["error"]
    assert TOKEN not in json.dumps(body)


async def check_token_rules(port: int, x: np.ndarray[Any, Any]) -> None:
    for method, path in PROTECTED:
        body = infer_body(x) if path.endswith("/infer") else None
        status, headers, reply = await ask(port, method, path, body=body)
        assert_refused(status, headers, reply, wrong=False)
        for wrong in (f"Bearer {TOKEN}x", "Bearer " + TOKEN[:-1], "Bearer é-not-ascii"):
            status, headers, reply = await ask(port, method, path, authorization=wrong, body=body)
            assert_refused(status, headers, reply, wrong=True)
        # Another scheme is not a bearer token at all.
        status, headers, reply = await ask(port, method, path, authorization=f"Basic {TOKEN}")
        assert_refused(status, headers, reply, wrong=False)
    # Liveness says only that the process answers HTTP; probes carry no secrets.
    assert (await ask(port, "GET", "/v2/health/live"))[0] == 200
    right = f"Bearer {TOKEN}"
    assert (await ask(port, "GET", "/v2/health/ready", authorization=right))[0] == 200
    status, _, reply = await ask(
        port, "POST", "/v2/models/digits-small/infer", authorization=right, body=infer_body(x)
    )
    assert status == 200, reply
    assert reply["outputs"][0]["name"] == "label"
    # The scheme is case-insensitive (RFC 7235); a route that does not exist is 404 once in.
    assert (await ask(port, "GET", "/v2", authorization=f"bearer {TOKEN}"))[0] == 200
    assert (await ask(port, "GET", "/v2/no/such/route", authorization=right))[0] == 404


async def test_the_gateway_wants_its_bearer_token(runtime: Runtime, digits: Digits) -> None:
    config = gateway_config(http=HttpConfig(port=0, token=TOKEN))
    async with running_gateway(config, runtime) as gateway:
        await check_token_rules(gateway.port, digits[0][:2].astype(np.float32))


async def test_a_node_wants_its_bearer_token(digits: Digits) -> None:
    async with running_node(node_config(http=HttpConfig(port=0, token=TOKEN))) as node:
        assert node.http_port is not None
        assert node.status()["http"] == {
            "port": node.http_port,
            "host": "127.0.0.1",
            "tls": False,
            "token": True,
        }
        await check_token_rules(node.http_port, digits[0][:2].astype(np.float32))


async def test_without_a_token_nothing_is_asked(runtime: Runtime) -> None:
    async with running_gateway(gateway_config(), runtime) as gateway:
        assert (await ask(gateway.port, "GET", "/v2/models/digits-small"))[0] == 200


def triton_session(port: int, x: np.ndarray[Any, Any]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert client.is_server_live()
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.get_model_metadata("digits-small")
        assert client.is_server_ready(headers=headers)
        assert client.get_model_metadata("digits-small", headers=headers)["name"] == "digits-small"
        tensor = triton.InferInput("X", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("digits-small", [tensor], headers=headers)
        assert result.as_numpy("label").shape == (x.shape[0],)
    finally:
        client.close()


async def test_tritonclient_sends_the_token_as_a_header(runtime: Runtime, digits: Digits) -> None:
    pytest.importorskip("tritonclient.http")
    config = gateway_config(http=HttpConfig(port=0, token=TOKEN))
    async with running_gateway(config, runtime) as gateway:
        await asyncio.to_thread(triton_session, gateway.port, digits[0][:3].astype(np.float32))


# --- error texts do not show where the gateway is ---------------------------------------


async def test_errors_do_not_show_the_gateways_url(runtime: Runtime, digits: Digits) -> None:
    x = digits[0][:1].astype(np.float32)
    async with running_gateway(gateway_config(), runtime) as gateway:
        config = node_config(http=HttpConfig(port=0), gateway=GatewayClientConfig(url=gateway.url))
        async with running_node(config) as node:
            assert node.http_port is not None
            where = (gateway.url, f":{gateway.port}", "127.0.0.1")
            status, _, reply = await ask(node.http_port, "GET", "/v2/models/no-such-model")
            assert status == 404 and reply["code"] == "ModelNotFound", reply
            assert not any(part in reply["error"] for part in where), reply
            assert "no-such-model" in reply["error"]
            # Over RPC, the same: an unknown model, which the gateway does not know either.
            async with MeshClient(f"127.0.0.1:{node.port}") as client:
                with pytest.raises(ModelNotFound) as refused:
                    await client.infer("no-such-model", {"X": x})
            assert not any(part in refused.value.message for part in where), refused.value
    # The gateway is gone: the node says so without saying where it was.
    async with running_node(config) as node:
        assert node.http_port is not None
        status, _, reply = await ask(
            node.http_port, "POST", "/v2/models/digits-large/infer", body=infer_body(x)
        )
        assert status == 503 and reply["code"] == "Overloaded", reply
        assert "the gateway" in reply["error"]
        assert not any(part in reply["error"] for part in where), reply


async def test_a_forwarding_gateways_errors_do_not_show_its_upstream(
    runtime: Runtime, digits: Digits
) -> None:
    async with running_gateway(gateway_config(name="cloud"), runtime) as cloud:
        upstream_url = cloud.url
        front_config = gateway_config(name="front", upstream=GatewayClientConfig(url=upstream_url))
        async with running_gateway(front_config) as front:
            status, _, reply = await ask(front.port, "GET", "/v2/models/no-such-model")
            assert status == 404, reply
            assert upstream_url not in reply["error"] and str(cloud.port) not in reply["error"]
            assert reply["error"].startswith("the upstream"), reply


# --- where a keyed node's HTTP API listens --------------------------------------------


def loaded(tmp_path: Path, **flags: object) -> Any:
    key_file = tmp_path / "mesh.key"
    key_file.write_bytes(KEY)
    base: dict[str, object] = {"port": "0", "http_port": "0", "mesh_key_file": str(key_file)}
    base.update(flags)
    return load_node_config({k: v for k, v in base.items() if v is not None}, {})


@pytest.mark.parametrize(
    ("flags", "http_host", "explained"),
    [
        # Keyed, no token, every interface asked for: HTTP stays on loopback, and says why.
        ({"host": "0.0.0.0"}, "127.0.0.1", True),
        # Asked for explicitly: as asked.
        ({"host": "0.0.0.0", "http_host": "0.0.0.0"}, "0.0.0.0", False),
        # With a token, HTTP follows --host.
        ({"host": "0.0.0.0", "http_token_file": "TOKEN"}, "0.0.0.0", False),
        # Without a key, nothing changes (the node warns it is open anyway).
        ({"host": "0.0.0.0", "mesh_key_file": None}, "0.0.0.0", False),
        # Already on loopback: nothing to say.
        ({"host": "127.0.0.1"}, "127.0.0.1", False),
    ],
)
def test_a_keyed_node_without_a_token_keeps_http_on_loopback(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    flags: dict[str, object],
    http_host: str,
    explained: bool,
) -> None:
    if flags.get("http_token_file") == "TOKEN":
        flags = {**flags, "http_token_file": str(token_file(tmp_path)[1])}
    config = loaded(tmp_path, **flags)
    if flags.get("mesh_key_file", "") is None:
        config = replace(config, mesh_key=None)
    caplog.set_level(logging.INFO, logger="mesh.node.http_face")
    sockets = claim_ports(config)
    try:
        rpc, http = sockets
        assert rpc.getsockname()[0] == flags["host"]
        assert http.getsockname()[0] == http_host
    finally:
        for sock in sockets:
            sock.close()
    lines = [r.getMessage() for r in caplog.records if "HTTP API listens" in r.getMessage()]
    assert bool(lines) == explained, lines
    if explained:
        assert "--http-token-file" in lines[0] and "--http-host" in lines[0]
    # mDNS offers the HTTP port only where the devices that find the node
    # can use it: not when HTTP was kept on loopback behind a public RPC port.
    offered = advert(config, node_id="n1", mesh_id="m", rpc_port=7000, http_port=8000)
    assert offered.http_port == (None if explained else 8000)


def test_token_files_are_checked_at_start(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="at least 16"):
        loaded(tmp_path, http_token_file=str(short))
    spaced = tmp_path / "spaced"
    spaced.write_text("two words of token text here\n")
    with pytest.raises(ConfigError, match="without spaces"):
        loaded(tmp_path, http_token_file=str(spaced))
    with pytest.raises(ConfigError, match="http_token_file: cannot read"):
        loaded(tmp_path, http_token_file=str(tmp_path / "missing"))
    token, path = token_file(tmp_path)
    config = loaded(tmp_path, http_token_file=str(path))
    assert config.http.token == token
    assert token not in repr(config)
    with pytest.raises(ConfigError, match="need a gateway URL"):
        loaded(tmp_path, gateway_token_file=str(path))
    with pytest.raises(ConfigError, match="tls_cert and tls_key go together"):
        loaded(tmp_path, tls_cert=str(path))


async def test_a_strangers_big_body_is_not_waited_for(runtime: Runtime) -> None:
    """401 comes from the headers alone, with the connection to be closed after it
    (aiohttp discards what is still coming for at most its lingering time)."""
    config = gateway_config(http=HttpConfig(port=0, token=TOKEN))
    async with running_gateway(config, runtime) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            declared = 60 * 1024 * 1024
            writer.write(
                b"POST /v2/models/digits-small/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {declared}\r\n\r\n".encode()
                + b"{" * 4096
            )
            await writer.drain()
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.close()
        assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n"), head
        assert b"WWW-Authenticate: Bearer" in head
        assert b"Connection: close" in head
        # Still serving others.
        assert (await ask(gateway.port, "GET", "/v2", authorization=f"Bearer {TOKEN}"))[0] == 200


@pytest.mark.parametrize(
    ("host", "token", "is_open"),
    [
        ("0.0.0.0", None, True),
        ("10.0.0.5", None, True),
        ("0.0.0.0", TOKEN, False),
        ("127.0.0.1", None, False),
        ("localhost", None, False),
    ],
)
def test_a_gateway_on_the_network_without_a_token_is_open(
    host: str, token: str | None, is_open: bool
) -> None:
    config = gateway_config(host=host, http=HttpConfig(port=0, token=token))
    assert config.open_to_network is is_open


async def test_an_open_gateway_says_so_at_start(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.gateway.server")
    # Listening on every interface; the test talks to it on 127.0.0.1 only.
    async with running_gateway(gateway_config(host="0.0.0.0"), runtime) as gateway:
        assert (await ask(gateway.port, "GET", "/v2/health/ready"))[0] == 200
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("gateway is OPEN" in line and "--http-token-file" in line for line in lines), lines
