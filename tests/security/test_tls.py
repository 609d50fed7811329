"""TLS on the HTTP side (issue 19), and the node's way to its gateway with token + TLS.

A self-signed certificate for 127.0.0.1 is made in each test's directory;
gateways and nodes run in this event loop on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from mesh.config import (
    BreakerConfig,
    GatewayClientConfig,
    HttpConfig,
    load_gateway_config,
    load_node_config,
)
from mesh.errors import ConfigError, Overloaded, PeerUnavailable
from mesh.gateway.client import GatewayClient
from mesh.runtime.runtime import Runtime
from mesh.sdk.client import MeshClient
from tests.helpers.gateway import gateway_config, gateway_runtime, running_gateway
from tests.helpers.nodes import node_config, running_node
from tests.helpers.tls import Certificate, self_signed, token_file

pytestmark = pytest.mark.timeout(60)

Digits = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
FAST_BREAKER = BreakerConfig(failure_threshold=2, open_s=0.05, max_open_s=0.2)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with gateway_runtime(concurrency=1) as loaded:
        yield loaded


@pytest.fixture
def cert(tmp_path: Path) -> Certificate:
    return self_signed(tmp_path)


def tls_http(cert: Certificate, token: str | None = None) -> HttpConfig:
    return HttpConfig(port=0, tls_cert=cert.cert, tls_key=cert.key, token=token)


async def logged(caplog: pytest.LogCaptureFixture, line: str) -> bool:
    """Whether ``line`` is logged within 5 s (bounded polling: the log has no event)."""
    for _ in range(500):
        if line in caplog.messages:
            return True
        await asyncio.sleep(0.01)
    return False


async def get(url: str, cafile: Path | None, **headers: str) -> tuple[int, bytes]:
    context = None if cafile is None else ssl.create_default_context(cafile=str(cafile))
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=context if context is not None else True, headers=headers) as reply,
    ):
        return reply.status, await reply.read()


async def test_the_gateway_serves_https_and_plain_http_fails_cleanly(
    runtime: Runtime, cert: Certificate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway(gateway_config(http=tls_http(cert)), runtime) as gateway:
        https = f"https://127.0.0.1:{gateway.port}"
        assert gateway.url == https
        assert (await get(https + "/v2/models/digits-small", cert.cert))[0] == 200
        # Without trusting the certificate, the client refuses the server.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(https + "/v2", None)
        # Plain HTTP to the TLS port: the connection fails, within seconds, nothing hangs.
        async with asyncio.timeout(10):
            with pytest.raises(aiohttp.ClientError):
                await get(f"http://127.0.0.1:{gateway.port}/v2", None)
            # And raw garbage that is no TLS at all.
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert not (await reader.read(4096)).startswith(b"HTTP/1.1 200")
            writer.close()
        # The server is still fine, and logged no error for any of it.
        assert (await get(https + "/v2/health/ready", cert.cert))[0] == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    said = [r.getMessage() for r in caplog.records]
    assert any(f"gateway listening on {https}, serving" in line for line in said), said


async def test_a_node_serves_https_with_a_token(
    cert: Certificate, tmp_path: Path, digits: Digits
) -> None:
    token, _ = token_file(tmp_path)
    async with running_node(node_config(http=tls_http(cert, token))) as node:
        assert node.status()["http"]["tls"] is True
        url = f"https://127.0.0.1:{node.http_port}/v2/models/digits-small"
        assert (await get(url, cert.cert))[0] == 401
        assert (await get(url, cert.cert, Authorization=f"Bearer {token}"))[0] == 200


async def test_a_node_offloads_to_its_gateway_with_token_and_tls(
    runtime: Runtime,
    cert: Certificate,
    tmp_path: Path,
    digits: Digits,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.node")
    token, _ = token_file(tmp_path)
    x = digits[0][:3].astype(np.float32)
    async with running_gateway(gateway_config(http=tls_http(cert, token)), runtime) as gateway:
        url = f"https://127.0.0.1:{gateway.port}"
        config = node_config(
            gateway=GatewayClientConfig(url=url, token=token, ca_file=cert.cert),
        )
        async with running_node(config) as node:
            # digits-large lives on the gateway only: it must go there.
            async with MeshClient(f"127.0.0.1:{node.port}") as client:
                answer = await client.infer("digits-large", {"X": x})
            assert answer.ran_on == "gateway"
            assert answer["label"].shape == (3,)
            status = node.status()["gateway"]
            assert status["state"] == "closed" and status["failures"] == 0
            # The start-up readiness check went with the token too.
            assert await logged(caplog, f"gateway {url}: ready")


async def test_a_wrong_token_opens_the_breaker_and_says_why(
    runtime: Runtime,
    cert: Certificate,
    tmp_path: Path,
    digits: Digits,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token, _ = token_file(tmp_path, "right")
    wrong, _ = token_file(tmp_path, "wrong")
    x = digits[0][:1].astype(np.float32)
    caplog.set_level(logging.INFO, logger="mesh")
    async with running_gateway(gateway_config(http=tls_http(cert, token)), runtime) as gateway:
        url = f"https://127.0.0.1:{gateway.port}"
        config = node_config(
            gateway=GatewayClientConfig(
                url=url, token=wrong, ca_file=cert.cert, breaker=FAST_BREAKER
            ),
        )
        async with running_node(config) as node, MeshClient(f"127.0.0.1:{node.port}") as client:
            messages = []
            for _ in range(3):
                # The client hears "no capacity now, and why"; the why is the gateway's refusal.
                with pytest.raises(Overloaded) as refused:
                    await client.infer("digits-large", {"X": x})
                messages.append(refused.value.message)
            assert "the gateway refused our credentials (HTTP 401)" in messages[0]
            assert "circuit open after 2 failures (last: refused our credentials" in messages[-1]
            assert all(url not in m and wrong not in m for m in messages), messages
            status = node.status()["gateway"]
            assert status["last_failure"] == "refused our credentials (HTTP 401)"
            assert status["opened"] >= 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused our credentials (HTTP 401); check --gateway-token-file" in logged
    assert wrong not in logged and token not in logged


async def test_a_gateway_certificate_not_from_the_ca_file_is_refused(
    runtime: Runtime, cert: Certificate, tmp_path: Path, digits: Digits
) -> None:
    other = self_signed(tmp_path, "another-ca")
    async with running_gateway(gateway_config(http=tls_http(cert)), runtime) as gateway:
        config = GatewayClientConfig(url=f"https://127.0.0.1:{gateway.port}", ca_file=other.cert)
        async with GatewayClient(config) as client:
            with pytest.raises(PeerUnavailable, match="TLS certificate was not accepted") as no:
                await client.infer("digits-large", {"X": digits[0][:1].astype(np.float32)})
            assert "certificate verify failed" in no.value.message
            assert str(gateway.port) not in no.value.message


async def test_tls_settings_that_cannot_work_are_refused_at_start(
    cert: Certificate, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="only for an https:// URL"):
        GatewayClient(GatewayClientConfig(url="http://127.0.0.1:1", ca_file=cert.cert))
    # From flags, before anything starts.
    with pytest.raises(ConfigError, match="gateway_ca_file is only for an https:// gateway URL"):
        load_node_config({"gateway": "http://127.0.0.1:1", "gateway_ca_file": str(cert.cert)}, {})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot be used as a PEM certificate chain"):
        async with running_gateway(
            gateway_config(http=HttpConfig(port=0, tls_cert=garbage, tls_key=cert.key))
        ):
            pass
    # From flags, files that are no TLS material fail the start, naming the setting.
    other = self_signed(tmp_path, "other")
    with pytest.raises(ConfigError, match=r"tls_cert .* cannot be used .* private key"):
        load_gateway_config(
            {"port": "0", "tls_cert": str(cert.cert), "tls_key": str(other.key)}, {}
        )
    with pytest.raises(ConfigError, match=r"gateway_ca_file: .* holds no usable PEM certificate"):
        load_node_config({"gateway": "https://127.0.0.1:1", "gateway_ca_file": str(garbage)}, {})
    with pytest.raises(ConfigError, match=r"upstream_ca_file: .* is not a readable file"):
        load_gateway_config(
            {"upstream": "https://127.0.0.1:1", "upstream_ca_file": str(tmp_path / "nope")}, {}
        )


def test_every_credential_comes_from_flags_toml_or_the_environment(
    cert: Certificate, tmp_path: Path
) -> None:
    token, token_path = token_file(tmp_path)
    node = load_node_config(
        {},
        {
            "EDGEMESH_HTTP_PORT": "0",
            "EDGEMESH_HTTP_HOST": "127.0.0.2",
            "EDGEMESH_HTTP_TOKEN_FILE": str(token_path),
            "EDGEMESH_TLS_CERT": str(cert.cert),
            "EDGEMESH_TLS_KEY": str(cert.key),
            "EDGEMESH_GATEWAY": "https://127.0.0.1:8443",
            "EDGEMESH_GATEWAY_TOKEN_FILE": str(token_path),
            "EDGEMESH_GATEWAY_CA_FILE": str(cert.cert),
        },
    )
    assert node.http == HttpConfig(
        port=0, host="127.0.0.2", token=token, tls_cert=cert.cert, tls_key=cert.key
    )
    assert node.gateway is not None
    assert (node.gateway.token, node.gateway.ca_file) == (token, cert.cert)
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        f'http_token_file = "{token_path}"\ntls_cert = "{cert.cert}"\ntls_key = "{cert.key}"\n'
        f'upstream = "https://127.0.0.1:9443"\nupstream_token_file = "{token_path}"\n'
        f'upstream_ca_file = "{cert.cert}"\n'
    )
    gateway = load_gateway_config({}, {}, toml)
    assert (gateway.http.token, gateway.http.tls_cert, gateway.http.tls_key) == (
        token,
        cert.cert,
        cert.key,
    )
    assert gateway.upstream is not None
    assert (gateway.upstream.token, gateway.upstream.ca_file) == (token, cert.cert)
    assert token not in repr(node) + repr(gateway)


async def test_a_forwarding_gateway_reaches_its_upstream_with_token_and_tls(
    runtime: Runtime, cert: Certificate, tmp_path: Path, digits: Digits
) -> None:
    token, _ = token_file(tmp_path)
    x = digits[0][:2].astype(np.float32)
    back_config = gateway_config(name="back", http=tls_http(cert, token))
    async with running_gateway(back_config, runtime) as back:
        upstream = GatewayClientConfig(
            url=f"https://127.0.0.1:{back.port}", token=token, ca_file=cert.cert
        )
        async with running_gateway(gateway_config(name="front", upstream=upstream)) as front:
            async with GatewayClient(GatewayClientConfig(url=front.url)) as client:
                out = await client.infer("digits-large", {"X": x})
            assert out["label"].shape == (2,)
        # Without the token, the front says the upstream refused it, not where it is.
        refused = GatewayClientConfig(url=f"https://127.0.0.1:{back.port}", ca_file=cert.cert)
        async with running_gateway(gateway_config(name="front", upstream=refused)) as front:
            async with GatewayClient(GatewayClientConfig(url=front.url)) as client:
                # 503 from the front, which a client hears as Overloaded, with the reason.
                with pytest.raises(Overloaded, match="the upstream refused our cred") as no:
                    await client.infer("digits-large", {"X": x})
            assert str(back.port) not in no.value.message


def test_a_token_sent_over_plain_http_is_allowed_but_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token, _ = token_file(tmp_path)
    caplog.set_level(logging.WARNING, logger="mesh.gateway")
    GatewayClient(GatewayClientConfig(url="http://127.0.0.1:1", token=token))
    said = [r.getMessage() for r in caplog.records]
    assert any("is plain http: its token crosses the network" in line for line in said), said
    assert not any(token in line for line in said)
    caplog.clear()
    GatewayClient(GatewayClientConfig(url="https://127.0.0.1:1", token=token))
    assert not caplog.records
