"""A node checks its ``--gateway`` URL at start and logs whether it answered,
without waiting for it to start serving."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

import pytest

from mesh.config import GatewayClientConfig, RuntimeConfig
from tests.helpers import MODELS_DIR
from tests.helpers.gateway import gateway_config, misbehaving_server, running_gateway
from tests.helpers.nodes import node_config, running_node

pytestmark = pytest.mark.timeout(60)

LOGGER = "mesh.node.node"


async def logged(caplog: pytest.LogCaptureFixture, start: str) -> logging.LogRecord:
    """The node's log record that starts with ``start``, waiting at most 5 s for it."""
    for _ in range(500):
        for record in caplog.records:
            if record.name == LOGGER and record.getMessage().startswith(start):
                return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"no log line starting {start!r}: {caplog.messages}")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_gateway_that_answers_is_said_ready(caplog: pytest.LogCaptureFixture) -> None:
    large = RuntimeConfig(model_dirs=(MODELS_DIR,), model_names=("digits-large",))
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with running_gateway(gateway_config(runtime=large)) as gateway:
        url = gateway.url
        config = replace(node_config(), gateway=GatewayClientConfig(url=url))
        async with running_node(config):
            record = await logged(caplog, f"gateway {url}")
    assert record.getMessage() == f"gateway {url}: ready"
    assert record.levelno == logging.INFO


async def test_a_gateway_that_does_not_answer_is_said_so_and_the_node_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    caplog.set_level(logging.INFO, logger=LOGGER)
    config = replace(node_config(), gateway=GatewayClientConfig(url=url))
    async with running_node(config) as node:
        assert node.ready.is_set()
        record = await logged(caplog, f"gateway {url}")
    assert record.getMessage() == (
        f"gateway {url} did not answer (connection refused); requests the mesh "
        "cannot serve get Overloaded until it does"
    )
    assert record.levelno == logging.WARNING


async def test_a_gateway_that_is_not_ready_is_said_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with misbehaving_server() as (url, state):
        state["ready"] = 503
        config = replace(node_config(), gateway=GatewayClientConfig(url=url))
        async with running_node(config):
            record = await logged(caplog, f"gateway {url}")
    assert record.getMessage() == (
        f"gateway {url} is not ready (health check answered HTTP 503); requests the mesh "
        "cannot serve get Overloaded until it does"
    )
