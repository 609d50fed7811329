"""The SDK against real nodes on 127.0.0.1: choosing a node, failing over, discovery, sync use."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mesh import (
    AuthError,
    Client,
    Inference,
    InvalidInput,
    MeshClient,
    MeshError,
    ModelNotFound,
    Overloaded,
    PeerUnavailable,
)
from mesh.config import MeshConfig
from mesh.node.node import Node
from tests.helpers import KEY, MODELS_DIR
from tests.helpers.nodes import counters, mesh_node_config, mesh_of, node_config, running_node

pytestmark = pytest.mark.timeout(60)

Array = np.ndarray[Any, Any]


@pytest.fixture(scope="module")
def digits_small() -> Any:
    return ort.InferenceSession(
        str(MODELS_DIR / "digits-small.onnx"), providers=["CPUExecutionProvider"]
    )


@pytest.fixture
def rows(digits: tuple[Array, Array]) -> Array:
    return digits[0][:200].astype(np.float32)


def address(node: Node) -> str:
    return f"127.0.0.1:{node.port}"


def assert_right(answers: Sequence[Inference], rows: Array, session: Any) -> None:
    (expected,) = session.run(["label"], {"X": rows})
    assert len(answers) == len(rows)
    for answer, label in zip(answers, expected, strict=True):
        assert answer["label"].tolist() == [label]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def standalone(names: Sequence[str]) -> AsyncIterator[list[Node]]:
    """Emulated one-slot nodes that do not know each other, so load stays where it lands."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running_node(mesh_node_config(name, None, steal=False)))
            for name in names
        ]


# --- choosing a node ---------------------------------------------------------------------------


async def test_the_least_loaded_node_is_chosen_whatever_the_order(rows: Array) -> None:
    async with (
        standalone(["busy", "idle"]) as (busy, idle),
        MeshClient(address(busy)) as loader,
        asyncio.TaskGroup() as tasks,
    ):
        # 100 requests of 10 ms queued on one slot: about a second of work.
        for i in range(100):
            tasks.create_task(loader.infer("digits-small", {"X": rows[i : i + 1]}, deadline=60))
        async with asyncio.timeout(10):
            # Polling the node's figures: there is no event to wait on.
            while (await loader.status())["scheduler"]["wait_ms"] < 300:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        for order in ([busy, idle], [idle, busy]):
            async with MeshClient([address(n) for n in order]) as client:
                assert client.address == address(idle)
                assert client.node["name"] == "idle"
                answer = await client.infer("digits-small", {"X": rows[:1]})
                assert answer.ran_on == "idle"
                assert answer.node == address(idle)


async def test_unreachable_nodes_are_each_named_with_the_reason() -> None:
    dead = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    with pytest.raises(PeerUnavailable) as raised:
        await MeshClient(dead, connect_timeout=2).connect()
    for where in dead:
        assert f"{where} (cannot connect to {where}" in raised.value.message
    # One address alone: its own error, as it came.
    with pytest.raises(PeerUnavailable, match=f"cannot connect to {dead[0]}"):
        await MeshClient(dead[0]).connect()


async def test_a_dead_address_among_live_ones_is_skipped() -> None:
    async with (
        running_node() as node,
        MeshClient([f"127.0.0.1:{closed_port()}", address(node)]) as client,
    ):
        assert client.address == address(node)
        assert await client.ping() > 0


async def test_keyed_nodes_refuse_a_wrong_key_with_auth_error() -> None:
    async with (
        running_node(node_config(name="k1", mesh_key=KEY)) as a,
        running_node(node_config(name="k2", mesh_key=KEY)) as b,
    ):
        nodes = [address(a), address(b)]
        with pytest.raises(AuthError, match="refused us"):
            await MeshClient(nodes, mesh_key=b"another key entirely").connect()
        async with MeshClient(nodes, mesh_key=KEY) as client:
            assert (await client.status())["auth"] is True


async def test_calls_before_connect_say_so() -> None:
    client = MeshClient("127.0.0.1:7700")
    with pytest.raises(PeerUnavailable, match="not connected"):
        await client.ping()
    assert client.address == "127.0.0.1:7700"
    assert client.node == {}


# --- answers -------------------------------------------------------------------------------------


async def test_infer_many_keeps_order_and_says_where_each_ran(
    rows: Array, digits_small: Any
) -> None:
    async with mesh_of([{}, {}]) as nodes, MeshClient(address(nodes[0])) as client:
        # A generator, read lazily, with few in flight at a time.
        answers = await client.infer_many(
            "digits-small", ({"X": rows[i : i + 1]} for i in range(100)), concurrency=8
        )
        assert_right(answers, rows[:100], digits_small)
        assert {a.ran_on for a in answers} <= {"n0", "n1"}
        assert {a.node for a in answers} == {address(nodes[0])}
        assert len({a.request_id for a in answers}) == 100
        assert await client.infer_many("digits-small", []) == []
        named = await client.infer("digits-small", {"X": rows[:1]}, request_id="mine-1")
        assert named.request_id == "mine-1"
        assert isinstance(named, dict)
        assert set(named) == {"label", "probabilities"}
        assert "ran_on=" in repr(named)


async def test_infer_many_raises_the_first_error_or_returns_each(rows: Array) -> None:
    batch = [{"X": rows[:1]}, {"X": rows[:1].astype(np.float64)}, {"X": rows[1:2]}]
    async with running_node() as node, MeshClient(address(node)) as client:
        with pytest.raises(InvalidInput, match="float32"):
            await client.infer_many("digits-small", batch)
        outcomes = await client.infer_many("digits-small", batch, return_exceptions=True)
        assert isinstance(outcomes[0], Inference)
        assert isinstance(outcomes[1], InvalidInput)
        assert isinstance(outcomes[2], Inference)


async def test_answers_from_a_node_are_final_and_never_retried(rows: Array) -> None:
    async with (
        running_node(node_config(name="a")) as a,
        running_node(node_config(name="b")) as b,
        MeshClient([address(a), address(b)]) as client,
    ):
        with pytest.raises(ModelNotFound):
            await client.infer("no-such-model", {"X": rows[:1]})
        with pytest.raises(InvalidInput):
            await client.infer("digits-small", {"X": rows[:1, :10]})
        images = np.zeros((8, 3, 64, 64), dtype=np.float32)
        with pytest.raises(Overloaded):
            await client.infer("cnn-heavy", {"image": images}, deadline=0.001)
        seen = [counters(a), counters(b)]
        # Each request reached exactly one node, once.
        assert sum(c["requests"] for c in seen) == 3
        errors: Counter[str] = Counter()
        for c in seen:
            errors.update(c["errors"])
        assert errors == {"ModelNotFound": 1, "InvalidInput": 1, "Overloaded": 1}
        assert sum(c["requests"] > 0 for c in seen) == 1


# --- failing over --------------------------------------------------------------------------------


async def test_stopping_the_node_in_use_mid_batch_loses_no_request(
    rows: Array, digits_small: Any
) -> None:
    async with mesh_of([{}, {}, {}]) as nodes:
        by_address = {address(n): n for n in nodes}
        async with MeshClient(list(by_address)) as client:
            victim = by_address[client.address]

            def batch() -> Iterator[dict[str, Array]]:
                for i in range(len(rows)):
                    if i == 80:
                        victim.stop()  # about 16 answered, 64 in flight
                    yield {"X": rows[i : i + 1]}

            answers = await client.infer_many("digits-small", batch())
            assert client.address != address(victim)
        assert_right(answers, rows, digits_small)
        entries = {a.node for a in answers}
        assert address(victim) in entries
        assert len(entries) >= 2
        assert {a.ran_on for a in answers} <= {"n0", "n1", "n2"}
        assert len({a.request_id for a in answers}) == len(rows)


class Proxy:
    """A TCP relay to a node that can go silent, as a node that lost power would."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.silent = False
        self.port = 0
        self._tasks: asyncio.TaskGroup | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            try:
                yield self
            finally:
                server.close()
                await server.wait_closed()
                self._tasks = None
                for task in self._pumps:
                    task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._tasks is not None
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = self._tasks.create_task(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if not self.silent:  # silent: swallowed, and no FIN either
                    sink.write(data)
                    await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()


async def test_a_node_that_goes_silent_is_left_after_the_heartbeat(
    rows: Array, digits_small: Any
) -> None:
    async with (
        standalone(["s0", "s1"]) as nodes,
        Proxy(nodes[0].port).running() as p0,
        Proxy(nodes[1].port).running() as p1,
    ):
        proxies = {f"127.0.0.1:{p.port}": p for p in (p0, p1)}
        async with MeshClient(list(proxies), heartbeat=0.2) as client:
            silenced = client.address

            def batch() -> Iterator[dict[str, Array]]:
                for i in range(100):
                    if i == 40:
                        proxies[silenced].silent = True
                    yield {"X": rows[i : i + 1]}

            answers = await client.infer_many("digits-small", batch(), concurrency=16)
            assert client.address != silenced
        assert_right(answers, rows[:100], digits_small)
        assert {a.node for a in answers} == set(proxies)


async def test_a_closed_client_fails_its_calls_and_can_reconnect(rows: Array) -> None:
    async with running_node() as node:
        client = MeshClient(address(node))
        await client.connect()
        await client.aclose()
        with pytest.raises(PeerUnavailable):
            await client.infer("digits-small", {"X": rows[:1]})
        async with client:
            assert (await client.infer("digits-small", {"X": rows[:1]}))["label"].shape == (1,)


# --- discovery -----------------------------------------------------------------------------------


def mdns_config(name: str, key: bytes) -> Any:
    return node_config(
        name=name, mesh_key=key, mesh=MeshConfig(mdns=True, interfaces=("127.0.0.1",))
    )


async def discovered(key: bytes, want: set[str]) -> MeshClient:
    """discover() until it has found every address in ``want`` (nodes announce after ~1 s)."""
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(PeerUnavailable):
                client = await MeshClient.discover(
                    mesh_key=key, interfaces=["127.0.0.1"], wait_s=1.5
                )
                if want <= set(client.addresses):
                    return client


async def test_discover_finds_the_nodes_of_our_mesh_only(rows: Array) -> None:
    # Other test runs may share loopback mDNS: unique names and keys.
    tag = uuid.uuid4().hex[:8]
    ours, theirs = f"key-{tag}-ours".encode() * 2, f"key-{tag}-theirs".encode() * 2
    async with (
        running_node(mdns_config(f"ours-a-{tag}", ours)) as a,
        running_node(mdns_config(f"ours-b-{tag}", ours)) as b,
        running_node(mdns_config(f"theirs-{tag}", theirs)) as other,
    ):
        client = await discovered(ours, {address(a), address(b)})
        assert address(other) not in client.addresses
        async with client:
            answer = await client.infer("digits-small", {"X": rows[:1]})
            assert answer.ran_on in {f"ours-a-{tag}", f"ours-b-{tag}"}
        client = await discovered(theirs, {address(other)})
        assert set(client.addresses) == {address(other)}
        # The blocking client discovers too (on a thread: these nodes share our loop).
        sync = await asyncio.to_thread(
            Client.discover, mesh_key=theirs, interfaces=["127.0.0.1"], wait_s=1.5
        )
        try:
            assert sync.address == address(other)
            assert sync.node["name"] == f"theirs-{tag}"
        finally:
            await asyncio.to_thread(sync.close)


async def test_discover_with_nobody_there_says_so() -> None:
    with pytest.raises(PeerUnavailable, match=r"no edgemesh node of mesh [0-9a-f]{16}"):
        await MeshClient.discover(
            mesh_key=uuid.uuid4().hex.encode(), interfaces=["127.0.0.1"], wait_s=0.3
        )


# --- the blocking client -------------------------------------------------------------------------


def use_sync_client(nodes: list[str], rows: Array) -> list[Inference]:
    closed = Client(nodes)
    closed.close()
    closed.close()
    with pytest.raises(PeerUnavailable, match="closed"):
        closed.ping()
    with Client(nodes) as client:
        assert client.address in nodes
        assert client.node["name"] in {"n0", "n1"}
        assert "digits-small" in [m.name for m in client.models()]
        assert client.status()["name"] == client.node["name"]
        assert client.ping() > 0
        one = client.infer("digits-small", {"X": rows[:1]}, deadline=10)
        with pytest.raises(InvalidInput):
            client.infer("digits-small", {"X": rows[:1].astype(np.float64)})
        outcomes = client.infer_many(
            "digits-small", [{"X": rows[:1].astype(np.float64)}], return_exceptions=True
        )
        assert isinstance(outcomes[0], MeshError)
        return [one, *client.infer_many("digits-small", ({"X": r[None]} for r in rows[1:50]))]


async def test_the_blocking_client_has_the_same_methods(rows: Array, digits_small: Any) -> None:
    async with mesh_of([{}, {}]) as nodes:
        # On a thread: the nodes run on this test's event loop.
        answers = await asyncio.to_thread(use_sync_client, [address(n) for n in nodes], rows)
    assert_right(answers, rows[:50], digits_small)
    with pytest.raises(PeerUnavailable):
        await asyncio.to_thread(Client, f"127.0.0.1:{closed_port()}")
