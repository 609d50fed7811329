"""Versions across a mesh: a pinned request runs only where its sha256 is, stealing too.

Real nodes on 127.0.0.1 serving tiny ONNX models that answer a constant (the
version's number), so every answer says which version ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from mesh.config import Emulation, GatewayClientConfig, MeshConfig, RuntimeConfig, WorkConfig
from mesh.errors import ModelNotFound
from mesh.node.node import Node
from mesh.sdk.client import MeshClient
from tests.helpers.gateway import gateway_config, running_gateway
from tests.helpers.nodes import converged, node_config, running_node
from tests.helpers.tiny_models import INPUT, OUTPUT, write_constant_model

X = {INPUT: np.ones((1, 2), dtype=np.float32)}


def versions_dir(root: Path, name: str, versions: Sequence[int]) -> Path:
    """A model directory holding ``versions`` of model ``m``, each answering its number."""
    directory = root / name
    for version in versions:
        write_constant_model(directory / "m" / str(version) / "model.onnx", float(version))
    return directory


@contextlib.asynccontextmanager
async def mesh(dirs: Sequence[Path], service_ms: float = 10.0) -> AsyncIterator[list[Node]]:
    """One node per directory, each bootstrapped from the first, one slot of ``service_ms``."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: list[Node] = []
        for index, directory in enumerate(dirs):
            config = node_config(
                name=f"n{index}",
                mesh=MeshConfig(
                    mdns=False,
                    peers=() if not nodes else (f"127.0.0.1:{nodes[0].port}",),
                    gossip_interval_s=0.05,
                ),
                runtime=RuntimeConfig(
                    model_dirs=(directory,),
                    per_model_concurrency=1,
                    executor_threads=1,
                    reload_interval_s=0,
                ),
                work=WorkConfig(slots=1, emulation=Emulation(speed=1.0, service_ms=service_ms)),
            )
            nodes.append(await stack.enter_async_context(running_node(config)))
        await converged(nodes)
        # Converged links; gossip of each other's versions follows within a period or two.
        async with asyncio.timeout(10):
            while True:
                if all(n.work.versions.labels("m") == all_versions(nodes) for n in nodes):
                    break
                await asyncio.sleep(0.02)
        yield nodes


def all_versions(nodes: Sequence[Node]) -> list[str]:
    labels = {s.version for n in nodes for s in n.runtime.versions("m")}
    return sorted(labels, key=int)


async def test_a_pinned_version_runs_where_that_file_is(tmp_path: Path) -> None:
    a_dir = versions_dir(tmp_path, "a", [1])
    b_dir = versions_dir(tmp_path, "b", [2])
    async with mesh([a_dir, b_dir]) as (a, _), MeshClient(f"127.0.0.1:{a.port}") as client:
        one = await client.infer("m", X, version="1")
        assert (float(one[OUTPUT][0, 0]), one.ran_on) == (1.0, "n0")
        two = await client.infer("m", X, version="2")
        assert (float(two[OUTPUT][0, 0]), two.ran_on) == (2.0, "n1")
        # Not pinned: the newest version in the mesh, which only b holds.
        newest = await client.infer("m", X)
        assert (float(newest[OUTPUT][0, 0]), newest.ran_on) == (2.0, "n1")
        with pytest.raises(ModelNotFound) as caught:
            await client.infer("m", X, version="3")
        assert caught.value.message == "model 'm' has no version '3'; versions served: '1', '2'"


async def test_stealing_moves_a_request_only_to_a_holder_of_its_sha256(tmp_path: Path) -> None:
    # a holds versions 1 and 2; b only 1. A burst at a for each version: b
    # takes a share of version 1's, and never one of version 2's.
    a_dir = versions_dir(tmp_path, "a", [1, 2])
    b_dir = versions_dir(tmp_path, "b", [1])
    async with mesh([a_dir, b_dir]) as (a, b), MeshClient(f"127.0.0.1:{a.port}") as client:
        for version, ran_on_b in (("2", False), ("1", True)):
            answers = await asyncio.gather(
                *(client.infer("m", X, version=version, deadline=30) for _ in range(30))
            )
            assert {float(r[OUTPUT][0, 0]) for r in answers} == {float(version)}
            where = Counter(r.ran_on for r in answers)
            if ran_on_b:
                assert where["n1"] > 0, where  # b stole some: the same file
            else:
                assert where == {"n0": 30}
        assert b.status()["counters"]["served"] == 0  # b owns none: it only ran stolen work


async def test_a_pinned_version_the_mesh_lacks_runs_as_that_version_on_the_gateway(
    tmp_path: Path,
) -> None:
    cloud = versions_dir(tmp_path, "cloud", [1, 2])
    edge = tmp_path / "edge"
    edge.mkdir()
    gateway_runtime = RuntimeConfig(model_dirs=(cloud,), executor_threads=1)
    async with running_gateway(gateway_config(runtime=gateway_runtime)) as gateway:
        config = node_config(
            runtime=RuntimeConfig(model_dirs=(edge,), executor_threads=1, reload_interval_s=0),
            gateway=GatewayClientConfig(url=gateway.url),
        )
        async with running_node(config) as node, MeshClient(f"127.0.0.1:{node.port}") as client:
            for version, value in (("1", 1.0), ("2", 2.0), (None, 2.0)):
                out = await client.infer("m", X, version=version)
                assert (float(out[OUTPUT][0, 0]), out.ran_on) == (value, "gateway")
            with pytest.raises(ModelNotFound, match="the gateway does not serve version '7' of it"):
                await client.infer("m", X, version="7")
