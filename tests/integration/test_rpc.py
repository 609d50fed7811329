"""The RPC edge on loopback: pipelining, timeouts, connection loss, limits, the handshake."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from mesh.config import RpcConfig
from mesh.core.wire.addresses import parse_address
from mesh.errors import (
    AuthError,
    BadRequest,
    MessageTooLarge,
    MethodNotFound,
    Overloaded,
    PeerUnavailable,
    RpcTimeout,
)
from mesh.rpc import Methods, RpcClient, RpcConnection, RpcServer
from tests.helpers import KEY
from tests.helpers.raw_rpc import RawConnection
from tests.helpers.rpc_server import bound_port, serving_rpc


async def sleep_then_echo(_: RpcConnection, params: list[Any]) -> Any:
    delay, value = params
    await asyncio.sleep(delay)
    return value


def echo(_: RpcConnection, params: list[Any]) -> Any:
    if len(params) != 1:
        raise BadRequest("echo takes one parameter")
    return params[0]


METHODS = Methods(inline={"echo": echo}, concurrent={"sleep_echo": sleep_then_echo})


def serving(
    *, key: bytes | None = None, config: RpcConfig | None = None
) -> contextlib.AbstractAsyncContextManager[RpcServer]:
    return serving_rpc(METHODS, name="rpc-test", key=key, config=config)


async def test_pipelined_calls_are_answered_out_of_order() -> None:
    async with serving() as server, RpcClient("127.0.0.1", bound_port(server)) as client:
        finished: list[str] = []

        async def call(delay: float, tag: str) -> None:
            assert await client.call("sleep_echo", [delay, tag]) == tag
            finished.append(tag)

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(call(0.3, "slow"))
            tasks.create_task(call(0.0, "fast"))
            tasks.create_task(call(0.1, "middle"))
        assert finished == ["fast", "middle", "slow"]


async def test_many_calls_in_flight_on_one_connection() -> None:
    async with serving() as server, RpcClient("127.0.0.1", bound_port(server)) as client:
        results = await asyncio.gather(*(client.call("echo", [i]) for i in range(2000)))
        assert results == list(range(2000))


async def test_timeout_fails_only_that_call_and_the_late_answer_is_dropped() -> None:
    async with serving() as server, RpcClient("127.0.0.1", bound_port(server)) as client:
        with pytest.raises(RpcTimeout, match="sleep_echo"):
            await client.call("sleep_echo", [0.5, "late"], timeout=0.05)
        await asyncio.sleep(0.6)  # the late answer arrives and must be ignored
        assert await client.call("echo", ["still fine"]) == "still fine"


async def test_connection_loss_fails_every_pending_call() -> None:
    async with serving() as server:
        client = RpcClient("127.0.0.1", bound_port(server))
        await client.connect()
        pending = [
            asyncio.create_task(client.call("sleep_echo", [30, i], timeout=60)) for i in range(5)
        ]
        await asyncio.sleep(0.1)
        for connection in list(server._connections):
            connection.abort()
        for task in pending:
            with pytest.raises(PeerUnavailable):
                await task
        with pytest.raises(PeerUnavailable):
            await client.call("echo", [1])
        await client.aclose()


async def test_connecting_to_a_closed_port_is_peer_unavailable() -> None:
    async with serving() as server:
        port = bound_port(server)
    with pytest.raises(PeerUnavailable, match=f"127.0.0.1:{port}"):
        await RpcClient("127.0.0.1", port).connect()


async def test_in_flight_limit_answers_overloaded() -> None:
    config = RpcConfig(max_in_flight_per_connection=3)
    async with (
        serving(config=config) as server,
        RpcClient("127.0.0.1", bound_port(server)) as client,
    ):
        slow = [asyncio.create_task(client.call("sleep_echo", [0.3, i])) for i in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="3 requests already in flight"):
            await client.call("sleep_echo", [0, "one too many"])
        assert await asyncio.gather(*slow) == [0, 1, 2]
        # Inline methods are answered even while the limit is reached.
        assert await client.call("echo", ["ok"]) == "ok"


async def test_unknown_method_names_what_is_served() -> None:
    async with serving() as server, RpcClient("127.0.0.1", bound_port(server)) as client:
        with pytest.raises(MethodNotFound, match="echo"):
            await client.call("nope", [])


async def test_outgoing_message_over_the_limit_fails_locally() -> None:
    config = RpcConfig(max_message_bytes=1024)
    async with (
        serving() as server,
        RpcClient("127.0.0.1", bound_port(server), config=config) as client,
    ):
        with pytest.raises(MessageTooLarge):
            await client.call("echo", [b"x" * 2048])
        assert await client.call("echo", ["small"]) == "small"


async def test_incoming_message_over_the_limit_closes_that_connection_only() -> None:
    config = RpcConfig(max_message_bytes=4096)
    async with serving(config=config) as server:
        port = bound_port(server)
        async with RpcClient("127.0.0.1", port) as bystander:
            raw = await RawConnection.open(port)
            raw.send([0, 1, "echo", [b"x" * 10_000]])
            notice = await raw.receive()
            assert notice[0] == 2 and notice[1] == "error"
            assert notice[2][0] == "MessageTooLarge"
            assert await raw.receive() is None
            await raw.close()
            assert await bystander.call("echo", ["alive"]) == "alive"


# --- the mesh-key handshake ------------------------------------------------------


async def test_matching_keys_connect() -> None:
    async with (
        serving(key=KEY) as server,
        RpcClient("127.0.0.1", bound_port(server), key=KEY) as client,
    ):
        assert client.hello["auth"] == "ok"
        assert client.hello["name"] == "rpc-test"
        assert await client.call("echo", [1]) == 1


async def test_wrong_key_is_refused_on_both_sides() -> None:
    async with serving(key=KEY) as server:
        with pytest.raises(AuthError, match="could not prove"):
            await RpcClient("127.0.0.1", bound_port(server), key=b"x" * 32).connect()


async def test_keyless_client_is_told_a_key_is_needed() -> None:
    async with serving(key=KEY) as server:
        with pytest.raises(AuthError, match="requires a mesh key"):
            await RpcClient("127.0.0.1", bound_port(server)).connect()


async def test_keyed_client_refuses_an_open_node() -> None:
    async with serving() as server:
        with pytest.raises(AuthError, match="open mesh"):
            await RpcClient("127.0.0.1", bound_port(server), key=KEY).connect()


async def test_a_call_before_the_handshake_is_refused_and_the_connection_closed() -> None:
    async with serving(key=KEY) as server:
        raw = await RawConnection.open(bound_port(server))
        reply = await raw.call(1, "echo", ["sneaky"])
        assert reply[:2] == [1, 1]
        assert reply[2][0] == "AuthError"
        assert await raw.receive() is None
        await raw.close()


async def test_a_wrong_proof_from_a_raw_client_closes_the_connection() -> None:
    async with serving(key=KEY) as server:
        raw = await RawConnection.open(bound_port(server))
        first = await raw.call(1, "hello", [{"nonce": b"n" * 32}])
        assert first[3]["auth"] == "hmac-sha256"
        second = await raw.call(2, "hello", [{"proof": b"p" * 32}])
        assert second[2][0] == "AuthError"
        assert await raw.receive() is None
        await raw.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:7700", ("127.0.0.1", 7700)), ("[::1]:80", ("::1", 80)), ("host", ("host", 7700))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, default_port=7700) == expected


@pytest.mark.parametrize("text", ["host:0", "host:99999", ":80", "host:port"])
def test_parse_address_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


async def test_a_notification_before_the_handshake_closes_the_connection() -> None:
    heard: list[list[Any]] = []
    methods = Methods(notifications={"gossip": lambda _, params: heard.append(params)})
    server = RpcServer(
        host="127.0.0.1",
        port=0,
        config=RpcConfig(),
        methods=methods,
        key=KEY,
        hello_info=dict,
    )
    await server.start()
    listening = asyncio.Event()
    task = asyncio.create_task(server.serve(listening))
    await listening.wait()
    try:
        raw = await RawConnection.open(bound_port(server))
        raw.send([2, "gossip", [{"name": "spoofed"}]])
        notice = await raw.receive()
        assert notice[:2] == [2, "error"]
        assert notice[2][0] == "AuthError"
        assert await raw.receive() is None
        await raw.close()
        assert heard == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
