"""The gateway client against real gateways on 127.0.0.1, and its breaker at work."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh.config import (
    BreakerConfig,
    Emulation,
    GatewayClientConfig,
    load_gateway_config,
)
from mesh.core.wire.oip import model_metadata
from mesh.core.wire.requests import InferRequest
from mesh.errors import (
    ConfigError,
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
)
from mesh.gateway.client import GatewayClient
from mesh.gateway.server import RuntimeService
from mesh.runtime.runtime import Runtime
from tests.helpers.gateway import (
    gateway_config,
    gateway_runtime,
    misbehaving_server,
    running_gateway,
)

Digits = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]
FAST_BREAKER = BreakerConfig(failure_threshold=3, open_s=0.05, max_open_s=0.2)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with gateway_runtime() as loaded:
        yield loaded


def client_for(url: str, **overrides: Any) -> GatewayClient:
    return GatewayClient(GatewayClientConfig(url=url, **overrides))


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        # Polling: the conditions are other objects' state, with no event to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def circuit_is(client: GatewayClient, state: str) -> Callable[[], bool]:
    """A condition for wait_for on the client's circuit.

    Not a lambda written in the test: after ``assert client.state == "open"``
    mypy would keep that narrowing inside it, though the state is exactly what
    changes while we wait.
    """
    return lambda: client.state == state


# --- a real gateway -------------------------------------------------------------------


async def test_outputs_equal_direct_onnxruntime(runtime: Runtime, digits: Digits) -> None:
    pixels, labels = digits
    async with (
        running_gateway(gateway_config(), runtime) as gateway,
        client_for(gateway.url) as client,
    ):
        assert await client.ready()
        got = await client.infer("digits-large", {"X": pixels[:32]}, request_id="r-1")
        want = await runtime.infer("digits-large", {"X": pixels[:32]})
        assert set(got) == {"label", "probabilities"}
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_array_equal(got["probabilities"], want["probabilities"])
        assert float(np.mean(got["label"] == labels[:32])) > 0.9
        # With a deadline that is easily met.
        small = await client.infer("digits-small", {"X": pixels[:3]}, deadline_s=10.0)
        assert small["label"].tolist() == labels[:3].tolist()
        metadata = await client.model_metadata("digits-large")
        assert metadata == model_metadata(runtime.spec("digits-large"))
        status = client.status()
        url = gateway.url
    assert status == {
        "url": url,
        "state": "closed",
        "retry_in_s": 0.0,
        "last_failure": None,
        "in_flight": 0,
        "max_in_flight": 256,
        "sent": 4,  # GET /v2 first: does it take binary tensors?
        "slow": 0,
        "failures": 0,
        "opened": 0,
        "probes": 0,
    }


async def test_client_errors_map_and_do_not_trip_the_breaker(
    runtime: Runtime, digits: Digits
) -> None:
    pixels, _ = digits
    async with (
        running_gateway(gateway_config(), runtime) as gateway,
        client_for(gateway.url, breaker=BreakerConfig(failure_threshold=1)) as client,
    ):
        with pytest.raises(ModelNotFound, match="no-such-model"):
            await client.infer("no-such-model", {"X": pixels[:1]})
        with pytest.raises(ModelNotFound):
            await client.model_metadata("no-such-model")
        with pytest.raises(InvalidInput, match="float32"):
            await client.infer("digits-small", {"X": pixels[:1].astype(np.float64)})
        with pytest.raises(InvalidInput, match="'Y'"):
            await client.infer("digits-small", {"Y": pixels[:1]})
        assert client.state == "closed"
        assert client.breaker.failures == 0


async def test_dead_gateway_opens_the_circuit_and_the_probe_closes_it(
    runtime: Runtime, digits: Digits
) -> None:
    pixels, _ = digits
    port = free_port()
    async with client_for(f"http://127.0.0.1:{port}/", breaker=FAST_BREAKER) as client:
        assert client.url == f"http://127.0.0.1:{port}"
        assert not await client.ready()
        for _ in range(3):
            with pytest.raises(PeerUnavailable, match="connection refused"):
                await client.infer("digits-small", {"X": pixels[:1]})
        assert client.state == "open"
        sent = client.sent
        with pytest.raises(PeerUnavailable) as refused:
            await client.infer("digits-small", {"X": pixels[:1]})
        message = refused.value.message
        # Errors reach clients, so they name the gateway without its URL (issue 19).
        assert message.startswith("the gateway is unavailable") and str(port) not in message
        assert "circuit open after 3 failures (last: connection refused)" in message
        assert "probe" in message
        assert client.sent == sent  # refused without contacting anyone
        # Probes keep failing (and backing off) while nothing listens.
        await wait_for(lambda: client.breaker.probe_failures >= 2)
        assert client.status()["opened"] == 1
        async with running_gateway(gateway_config(port), runtime):
            await wait_for(circuit_is(client, "closed"))
            out = await client.infer("digits-small", {"X": pixels[:2]})
            assert out["label"].shape == (2,)
        assert client.status()["state"] == "closed"


async def test_queue_cap_refuses_with_503_without_tripping_the_breaker(
    runtime: Runtime, digits: Digits
) -> None:
    pixels, _ = digits
    config = gateway_config(slots=1, queue_cap=1, emulation=Emulation(service_ms=1000))
    async with (
        running_gateway(config, runtime) as gateway,
        client_for(gateway.url, breaker=BreakerConfig(failure_threshold=1)) as client,
    ):
        service = gateway.service
        assert isinstance(service, RuntimeService)
        admitted = [
            asyncio.create_task(client.infer("digits-small", {"X": pixels[:1]})) for _ in range(2)
        ]
        # One runs (for a second), one waits: the queue is full.
        await wait_for(lambda: service.status()["running"] == 1 and service.status()["waiting"])
        with pytest.raises(Overloaded, match="queue cap 1"):
            await client.infer("digits-small", {"X": pixels[:1]})
        for task in admitted:
            assert (await task)["label"].shape == (1,)
        assert client.state == "closed"
        assert service.status()["refused"] == 1


async def test_upstream_gateway_forwards_to_another(runtime: Runtime, digits: Digits) -> None:
    pixels, _ = digits
    async with running_gateway(gateway_config(name="cloud"), runtime) as cloud:
        upstream = GatewayClientConfig(url=cloud.url)
        async with (
            running_gateway(gateway_config(name="front", upstream=upstream)) as front,
            client_for(front.url) as client,
        ):
            assert await client.ready()
            got = await client.infer("digits-large", {"X": pixels[:5]})
            want = await runtime.infer("digits-large", {"X": pixels[:5]})
            np.testing.assert_array_equal(got["probabilities"], want["probabilities"])
            assert await client.model_metadata("digits-large") == model_metadata(
                runtime.spec("digits-large")
            )
            with pytest.raises(ModelNotFound):
                await client.infer("nope", {"X": pixels[:1]})


# --- the gateway service on its own -----------------------------------------------------


async def test_a_request_admitted_on_an_average_is_stopped_at_its_deadline(
    runtime: Runtime, digits: Digits
) -> None:
    pixels, _ = digits
    service = RuntimeService(runtime, slots=1, queue_cap=4, emulation=Emulation(service_ms=200))
    inputs = {"X": pixels[:1]}
    first = asyncio.create_task(service.infer(InferRequest("digits-small", inputs)))
    await wait_for(lambda: service.status()["running"] == 1)
    # A busy slot is taken as half done: 100 + 200 ms fits 310 ms, but the
    # first call has just begun, so this one would end at 400 ms. It is
    # stopped at its deadline rather than answered late.
    with pytest.raises(DeadlineExceeded, match="deadline of 310 ms"):
        await service.infer(InferRequest("digits-small", inputs, deadline_ms=310))
    answer = await first
    assert answer.ran_on == "gateway"
    assert service.status()["expired"] == 1


async def test_a_request_that_could_not_finish_in_time_is_refused_at_once(
    runtime: Runtime, digits: Digits
) -> None:
    pixels, _ = digits
    service = RuntimeService(runtime, slots=1, queue_cap=64, emulation=Emulation(service_ms=50))
    inputs = {"X": pixels[:1]}
    await service.infer(InferRequest("digits-small", inputs))  # measures 50 ms a call
    outcomes = await asyncio.gather(
        *(service.infer(InferRequest("digits-small", inputs, deadline_ms=180)) for _ in range(8)),
        return_exceptions=True,
    )
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    late = [o for o in outcomes if isinstance(o, DeadlineExceeded)]
    # One slot of 50 ms fits three within 180 ms, and the estimate (a busy
    # slot is half done on average) may let a fourth try; the rest are
    # told at once instead of waiting to be late.
    assert len(answered) + len(refused) + len(late) == 8, outcomes
    assert 3 <= len(answered) <= 4, outcomes
    assert len(refused) >= 4, outcomes
    assert all("past its deadline of 180 ms" in r.message for r in refused)


async def test_emulation_pads_each_call_to_its_service_time(
    runtime: Runtime, digits: Digits
) -> None:
    pixels, _ = digits
    service = RuntimeService(runtime, slots=2, queue_cap=4, emulation=Emulation(service_ms=100))
    started = time.monotonic()
    answers = await asyncio.gather(
        *(service.infer(InferRequest("digits-small", {"X": pixels[:1]})) for _ in range(4))
    )
    # Four calls on two slots of 100 ms each: two rounds at least.
    assert time.monotonic() - started >= 0.19
    want = await runtime.infer("digits-small", {"X": pixels[:1]})
    for answer in answers:
        np.testing.assert_array_equal(answer.outputs["probabilities"], want["probabilities"])


# --- a misbehaving upstream ---------------------------------------------------------------
X = {"X": np.zeros((1, 64), np.float32)}


async def test_garbage_is_a_protocol_error_and_a_failure() -> None:
    async with misbehaving_server() as (url, _), client_for(url) as client:
        with pytest.raises(ProtocolError, match="not a V2 infer response"):
            await client.infer("garbage", X)
        assert client.breaker.failures == 1
        assert client.breaker.last_failure == "garbled answer"


async def test_a_hanging_gateway_gives_deadline_exceeded_on_time() -> None:
    async with misbehaving_server() as (url, _), client_for(url) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="did not answer within 200 ms"):
            await client.infer("hang", X, deadline_s=0.2)
        assert time.monotonic() - started < 2.0
        assert client.breaker.failures == 1
        assert client.in_flight == 0


async def test_a_busy_gateway_that_answers_others_is_slow_not_broken() -> None:
    async with misbehaving_server() as (url, _), client_for(url) as client:

        async def late() -> None:
            with pytest.raises(DeadlineExceeded):
                await client.infer("hang", X, deadline_s=0.3)

        async def answered() -> None:
            await asyncio.sleep(0.1)  # after the late ones were sent
            with pytest.raises(ModelNotFound):
                await client.infer("other", X)

        async with asyncio.TaskGroup() as tasks:
            for _ in range(4):
                tasks.create_task(late())
            tasks.create_task(answered())
        # Four deadlines ran out, but the gateway was answering meanwhile:
        # more than the threshold, and still no failure.
        assert client.slow == 4
        assert client.breaker.failures == 0
        assert client.state == "closed"


async def test_server_errors_open_the_circuit_and_a_ready_probe_closes_it() -> None:
    async with (
        misbehaving_server() as (url, state),
        client_for(url, breaker=FAST_BREAKER) as client,
    ):
        state["ready"] = 503
        for _ in range(3):
            with pytest.raises(InferenceFailed, match="kaput"):
                await client.infer("boom", X)
        assert client.state == "open"
        with pytest.raises(PeerUnavailable, match=r"last: HTTP 500: kaput"):
            await client.infer("boom", X)
        await wait_for(lambda: client.breaker.probe_failures >= 1)
        assert "health check answered HTTP 503" in str(client.status()["last_failure"])
        state["ready"] = 200
        await wait_for(circuit_is(client, "closed"))


async def test_busy_answers_are_overloaded_and_never_trip_the_breaker() -> None:
    async with misbehaving_server() as (url, _), client_for(url, breaker=FAST_BREAKER) as client:
        for _ in range(5):
            with pytest.raises(Overloaded, match="too busy"):
                await client.infer("busy", X)
        with pytest.raises(DeadlineExceeded, match="too late"):
            await client.infer("late", X)
        assert client.state == "closed"
        assert client.breaker.failures == 0


async def test_in_flight_limit_and_cancellation() -> None:
    async with misbehaving_server() as (url, _), client_for(url, max_in_flight=1) as client:
        hanging = asyncio.create_task(client.infer("hang", X))
        await wait_for(lambda: client.in_flight == 1 and client.sent == 2)
        with pytest.raises(Overloaded, match="max_in_flight 1"):
            await client.infer("hang", X)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        assert client.in_flight == 0
        assert client.breaker.failures == 0  # a cancelled request says nothing of the gateway


async def test_use_outside_the_block_is_a_bug() -> None:
    client = client_for("http://127.0.0.1:1")
    with pytest.raises(RuntimeError, match="async with"):
        await client.infer("m", X)


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://gateway:8000", "http:// or https://"),
        ("http://", "with a host"),
        ("gateway:8000", "http:// or https://"),
        ("http://gateway:99999", "not a valid URL"),
        ("http://gateway:8000/?x=1", "query"),
        ("", "non-empty"),
    ],
)
def test_bad_urls_are_config_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GatewayClient(GatewayClientConfig(url=url))


def test_gateway_config_defaults_env_and_flags(tmp_path: Path) -> None:
    defaults = load_gateway_config({}, {})
    assert defaults.host == "0.0.0.0"
    assert defaults.http.port == 8000
    assert defaults.name == "gateway"
    assert defaults.upstream is None and defaults.emulation is None

    environ = {"EDGEMESH_GATEWAY_PORT": "9000", "EDGEMESH_PORT": "1", "EDGEMESH_GATEWAY_SLOTS": "3"}
    config = load_gateway_config({"port": "0", "queue_cap": "0"}, environ)
    assert config.http.port == 0  # flags win
    assert config.slots == 3
    assert config.queue_cap == 0

    toml = tmp_path / "gateway.toml"
    toml.write_text('upstream = "http://triton:8000/"\nupstream_timeout = 2.5\n')
    forwarding = load_gateway_config({"emulate_service_ms": "40"}, {}, toml)
    assert forwarding.upstream == GatewayClientConfig(url="http://triton:8000", timeout_s=2.5)
    assert forwarding.emulation == Emulation(speed=1.0, service_ms=40.0)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ({"upstream": "triton:8000"}, "--upstream must be an http"),
        ({"upstream_timeout": "3"}, "need an upstream"),
        ({"queue_cap": "-1"}, "--queue-cap must be an integer >= 0"),
        ({"port": "http"}, "--port must be a port number"),
    ],
)
def test_bad_gateway_settings(flags: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_gateway_config(flags, {})
