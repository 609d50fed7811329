"""Nodes given no name on one machine: each named by host and port, all in one mesh."""

from __future__ import annotations

import logging
import secrets
import socket

import pytest

from mesh.config import MeshConfig
from mesh.core.wire.addresses import default_node_name
from tests.helpers.nodes import converged, node_config, running_node


async def test_nodes_on_port_zero_given_no_name_are_named_by_the_port_they_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostname = socket.gethostname()
    # What load_node_config gives for no --name and --port 0; mDNS on loopback only,
    # and a fresh key, so that only these two nodes meet.
    config = node_config(
        name=hostname,
        name_from_host=True,
        mesh=MeshConfig(interfaces=("127.0.0.1",)),
        mesh_key=secrets.token_hex(32).encode(),
    )
    caplog.set_level(logging.INFO, logger="mesh.node.node")
    async with running_node(config) as first, running_node(config) as second:
        names = [first.config.name, second.config.name]
        assert names == [
            default_node_name(hostname, node.port, default_port=7700) for node in (first, second)
        ]
        assert names[0] != names[1]
        for name in names:
            assert f"no --name given: calling this node {name!r}" in caplog.text
        # Found over mDNS alone (no bootstrap peer), each under its own name.
        await converged([first, second])
        peers = [node.status()["peers"] for node in (first, second)]
        assert [[p["name"] for p in view] for view in peers] == [[names[1]], [names[0]]]


async def test_a_name_given_is_used_as_is_and_not_announced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.node.node")
    async with running_node(node_config(name="kitchen-pi")) as node:
        assert node.config.name == "kitchen-pi"
    assert "no --name given" not in caplog.text
