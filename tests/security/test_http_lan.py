"""The HTTP side across a LAN (issue 19): two hosts in network namespaces on a bridge.

h1 runs a keyed node with ``--http-port`` and no token: its HTTP API must
stay on h1's loopback, so h2 cannot reach it while h1 can, and its RPC port
stays on the LAN. h2 runs a keyed node with a token and TLS: h1 reaches its
HTTP API over HTTPS, gets 401 without the token and an answer with it.
Processes started as a user would; traffic stays inside the namespaces.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import KEY
from tests.helpers.netns import LabUnavailable, NetnsLab, unavailable_reason
from tests.helpers.tls import self_signed, token_file

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
    pytest.mark.timeout(60),
]

RPC_PORT = 7700
HTTP_PORT = 8080
READY_S = 30.0


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    made = NetnsLab(hosts=2)
    try:
        try:
            made.setup()
        except LabUnavailable as exc:
            pytest.skip(f"cannot make network namespaces here: {exc}")
        yield made
    finally:
        problems = made.cleanup()
        assert not problems, problems


def wait_ready(lab: NetnsLab, host: str, workdir: Path) -> dict[str, object]:
    ready = workdir / f"{host}.ready.json"
    deadline = time.monotonic() + READY_S
    while not ready.exists():
        if time.monotonic() > deadline:
            log = (workdir / f"{host}.log").read_text(errors="replace")
            raise AssertionError(f"{host} did not start:\n{log}")
        time.sleep(0.1)
    info: dict[str, object] = json.loads(ready.read_text())
    return info


def curl(lab: NetnsLab, host: str, url: str, *args: str) -> str:
    """The HTTP status curl got inside ``host`` ("000" when it could not connect)."""
    command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", *args]
    result = subprocess.run(
        ["ip", "netns", "exec", lab.netns(host), *command, url],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    return result.stdout.strip()


def can_connect(lab: NetnsLab, host: str, address: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=3).close()"
    result = subprocess.run(
        ["ip", "netns", "exec", lab.netns(host), "python3", "-c", probe],
        capture_output=True,
        timeout=15,
        check=False,
    )
    return result.returncode == 0


def test_keyed_http_stays_local_without_a_token_and_works_over_the_lan_with_one(
    lab: NetnsLab, tmp_path: Path
) -> None:
    key_file = tmp_path / "mesh.key"
    key_file.write_bytes(KEY)
    token, token_path = token_file(tmp_path)
    h1, h2 = lab.address("h1"), lab.address("h2")
    cert = self_signed(tmp_path, "h2", ips=(h2,))
    http = ["--http-port", str(HTTP_PORT), "--no-mdns"]
    lab.start_node(
        "h1", port=RPC_PORT, key_file=key_file, workdir=tmp_path, model="digits-small", extra=http
    )
    tls = ["--http-token-file", str(token_path), "--tls-cert", str(cert.cert)]
    tls += ["--tls-key", str(cert.key)]
    lab.start_node(
        "h2",
        port=RPC_PORT,
        key_file=key_file,
        workdir=tmp_path,
        model="digits-small",
        extra=[*http, *tls],
    )
    wait_ready(lab, "h1", tmp_path)
    wait_ready(lab, "h2", tmp_path)

    # h1: RPC on the LAN, HTTP on its own loopback only, and its log says why.
    assert can_connect(lab, "h2", h1, RPC_PORT)
    assert not can_connect(lab, "h2", h1, HTTP_PORT)
    assert curl(lab, "h1", f"http://127.0.0.1:{HTTP_PORT}/v2/models/digits-small") == "200"
    log = (tmp_path / "h1.log").read_text()
    assert "the HTTP API listens on 127.0.0.1 only" in log, log

    # h2: HTTPS on the LAN with a token.
    url = f"https://{h2}:{HTTP_PORT}/v2/models/digits-small"
    trust = ["--cacert", str(cert.cert)]
    assert curl(lab, "h1", url, *trust) == "401"
    assert curl(lab, "h1", url, *trust, "-H", "Authorization: Bearer wrong-token-0123456789") == (
        "401"
    )
    assert curl(lab, "h1", url, *trust, "-H", f"Authorization: Bearer {token}") == "200"
    # Plain HTTP to the TLS port gets no answer of the API.
    assert curl(lab, "h1", f"http://{h2}:{HTTP_PORT}/v2/models/digits-small") != "200"
    assert token not in (tmp_path / "h2.log").read_text()
