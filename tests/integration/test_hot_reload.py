"""Hot reload under steady load: models come, change and go without a failed request.

A real node watches a model directory (every 50 ms) while a bounded client
loop keeps it busy. Each tiny model answers a constant, so every answer says
which version produced it: an answer mixing versions, a failed request, or a
client seeing the old version again after the new one would all show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mesh.config import Emulation, MeshConfig, NodeConfig, RuntimeConfig, WorkConfig
from mesh.errors import MeshError
from mesh.node.node import Node
from mesh.sdk.client import MeshClient
from tests.helpers.nodes import node_config, running_node
from tests.helpers.raw_rpc import RawConnection
from tests.helpers.tiny_models import INPUT, OUTPUT, write_constant_model

X = {INPUT: np.ones((4, 2), dtype=np.float32)}
CLIENTS = 8
MAX_REQUESTS = 20_000  # the loop's bound, whatever happens
MAX_SECONDS = 20.0


def watching_config(directory: Path) -> NodeConfig:
    # One slot of an emulated 20 ms device: the runtime gets one call at a
    # time, so requests wait in the scheduler's queue, already given their
    # version, when that version is replaced. They must still run on it.
    return node_config(
        mesh=MeshConfig(mdns=False),
        runtime=RuntimeConfig(
            model_dirs=(directory,),
            per_model_concurrency=2,
            executor_threads=2,
            reload_interval_s=0.05,
        ),
        work=WorkConfig(slots=1, emulation=Emulation(speed=1.0, service_ms=20.0)),
    )


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


class Load:
    """CLIENTS clients calling model ``m`` back to back until stopped (bounded)."""

    def __init__(self, client: MeshClient) -> None:
        self.client = client
        self.stop = asyncio.Event()
        self.answers: list[list[float]] = [[] for _ in range(CLIENTS)]
        self.failures: list[str] = []
        self.mixed: list[list[float]] = []
        self.sent = 0

    async def run(self) -> None:
        async with asyncio.timeout(MAX_SECONDS + 10), asyncio.TaskGroup() as tasks:
            for index in range(CLIENTS):
                tasks.create_task(self._client(index))

    async def _client(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        until_s = loop.time() + MAX_SECONDS
        while not self.stop.is_set() and self.sent < MAX_REQUESTS and loop.time() < until_s:
            self.sent += 1
            try:
                out = await self.client.infer("m", X, timeout=10)
            except MeshError as exc:
                self.failures.append(f"{exc.code}: {exc.message}")
                continue
            values = sorted({float(v) for v in out[OUTPUT].ravel()})
            if len(values) != 1:
                self.mixed.append(values)
            self.answers[index].append(values[0])

    def seen(self, value: float) -> bool:
        return any(value in answers for answers in self.answers)


async def test_add_replace_remove_and_a_broken_copy_under_load(tmp_path: Path) -> None:
    write_constant_model(tmp_path / "m.onnx", 1.0)
    async with (
        running_node(watching_config(tmp_path)) as node,
        MeshClient(f"127.0.0.1:{node.port}") as client,
    ):
        load = Load(client)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(load.run())
            try:
                await exercise(node, load, tmp_path)
            finally:
                load.stop.set()

        assert load.failures == [], load.failures[:5]
        assert load.mixed == []
        for answers in load.answers:
            # Each client sees version 1, then version 2, never 1 again after 2.
            assert answers, "a client got no answer at all"
            assert set(answers) <= {1.0, 2.0}
            assert answers == sorted(answers)
        assert load.seen(1.0) and load.seen(2.0)
        # Version 1's session is freed once nothing of it waits or runs.
        await until(lambda: node.runtime.retired() == [], "version 1 is freed")
        assert [s.version for s in node.runtime.versions("m")] == ["2"]


async def exercise(node: Node, load: Load, directory: Path) -> None:
    await until(lambda: load.seen(1.0), "version 1 answers")

    # A new model: served within a scan or two.
    write_constant_model(directory / "n" / "1" / "model.onnx", 5.0)
    await until(lambda: "n" in node.runtime, "model n is served")
    out = await MeshClientCall(node).infer("n")
    assert float(out) == 5.0

    # m replaced in place: a new version, numbered 2; version 1 retires.
    write_constant_model(directory / "m.onnx", 2.0)
    await until(lambda: node.runtime.spec("m").version == "2", "m version 2 is served")
    await until(lambda: all(2.0 in a for a in load.answers), "every client sees version 2")

    # A broken copy: logged, and version 2 keeps serving.
    (directory / "m.onnx").write_bytes(b"not a model")
    await asyncio.sleep(0.3)  # several scans
    assert node.runtime.spec("m").version == "2"

    # n removed: it stops being served.
    (directory / "n" / "1" / "model.onnx").unlink()
    await until(lambda: "n" not in node.runtime, "model n is retired")
    count = len(load.answers[0])
    await until(lambda: len(load.answers[0]) > count + 10, "m still answers after it all")


class MeshClientCall:
    """One call of another model on the same node, through its own client."""

    def __init__(self, node: Node) -> None:
        self.address = f"127.0.0.1:{node.port}"

    async def infer(self, model: str) -> float:
        async with MeshClient(self.address) as client:
            out = await client.infer(model, X)
        return float(out[OUTPUT][0, 0])


async def test_a_reload_asked_for_over_rpc_says_what_changed(tmp_path: Path) -> None:
    write_constant_model(tmp_path / "m.onnx", 1.0)
    config = node_config(
        mesh=MeshConfig(mdns=False),
        runtime=RuntimeConfig(model_dirs=(tmp_path,), executor_threads=1, reload_interval_s=0),
    )
    async with running_node(config) as node:
        write_constant_model(tmp_path / "m" / "7" / "model.onnx", 7.0)
        raw = await RawConnection.open(node.port)
        try:
            reply = await raw.call(1, "reload", [])
        finally:
            await raw.close()
        assert reply[2] is None
        assert [(m["name"], m["version"]) for m in reply[3]["added"]] == [("m", "7")]
        assert reply[3]["retired"] == [] and reply[3]["failed"] == []
        assert node.runtime.spec("m").version == "7"
        store = node.status()["model_store"]
        assert store["versions"] == {"m": ["1", "7"]}
        assert (store["reloads"], store["added"], store["retired"]) == (1, 1, 0)
        assert store["reload_interval_s"] == 0
