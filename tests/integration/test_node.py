"""A real node in this event loop: the served methods, and every kind of bad input."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import tomllib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from mesh import (
    AuthError,
    BadRequest,
    InvalidInput,
    MeshClient,
    MethodNotFound,
    ModelNotFound,
    Overloaded,
)
from mesh.config import RuntimeConfig
from mesh.core.wire.tensors import encode_tensors
from tests.helpers import KEY, MODELS_DIR
from tests.helpers.nodes import node_config, running_node
from tests.helpers.raw_rpc import RawConnection

Digits = tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]


def manifest_accuracy(model: str) -> float:
    manifest = tomllib.loads((MODELS_DIR / "manifest.toml").read_text())
    return float(manifest["models"][model]["accuracy"])


async def test_digits_small_accuracy_through_the_node_matches_the_manifest(
    digits: Digits,
) -> None:
    pixels, labels = digits
    async with running_node() as node, MeshClient(f"127.0.0.1:{node.port}") as client:
        # One request per digit, all in flight at once: the pipelined path.
        replies = await asyncio.gather(
            *(client.infer("digits-small", {"X": pixels[i : i + 1]}) for i in range(len(pixels)))
        )
        predicted = np.concatenate([reply["label"] for reply in replies])
        assert float(np.mean(predicted == labels)) == pytest.approx(
            manifest_accuracy("digits-small"), abs=1e-12
        )
        # And the whole split as one batch gives the same labels.
        batch = await client.infer("digits-small", {"X": pixels})
        np.testing.assert_array_equal(batch["label"], predicted)
        assert batch["probabilities"].shape == (len(pixels), 10)
        assert batch["probabilities"].dtype == np.float32
        status = await client.status()
        assert status["counters"]["served"] == len(pixels) + 1
        assert status["counters"]["failed"] == 0


async def test_models_status_and_ping() -> None:
    async with running_node() as node, MeshClient(f"127.0.0.1:{node.port}") as client:
        models = {m.name: m for m in await client.models()}
        assert set(models) == {"digits-small", "cnn-heavy"}
        small = models["digits-small"]
        assert [(t.name, t.dtype, t.shape) for t in small.inputs] == [("X", "float32", (-1, 64))]
        assert [t.name for t in small.outputs] == ["label", "probabilities"]
        assert len(small.sha256) == 64
        assert small.accuracy == pytest.approx(manifest_accuracy("digits-small"))
        assert models["cnn-heavy"].compute_only
        status = await client.status()
        assert status["name"] == "test-node"
        assert status["id"] == node.id
        assert status["models"] == ["cnn-heavy", "digits-small"]
        assert status["auth"] is False
        assert set(status["counters"]) >= {"requests", "served", "failed", "in_flight"}
        assert await client.ping() > 0
        assert client.node["name"] == "test-node"


async def test_model_errors_are_typed_and_say_what_was_expected() -> None:
    async with running_node() as node, MeshClient(f"127.0.0.1:{node.port}") as client:
        with pytest.raises(ModelNotFound, match="available models: 'cnn-heavy', 'digits-small'"):
            await client.infer("no-such-model", {"X": np.zeros((1, 64), np.float32)})
        with pytest.raises(InvalidInput, match="expected dtype float32, got float64"):
            await client.infer("digits-small", {"X": np.zeros((1, 64))})
        with pytest.raises(InvalidInput, match="64"):
            await client.infer("digits-small", {"X": np.zeros((1, 63), np.float32)})
        with pytest.raises(InvalidInput, match="'X'"):
            await client.infer("digits-small", {"pixels": np.zeros((1, 64), np.float32)})
        status = await client.status()
        assert status["counters"]["failed"] == 4
        assert status["counters"]["errors"] == {"ModelNotFound": 1, "InvalidInput": 3}


async def test_a_deadline_the_mesh_cannot_meet_is_refused_at_once() -> None:
    images = np.zeros((8, 3, 64, 64), dtype=np.float32)
    async with running_node() as node, MeshClient(f"127.0.0.1:{node.port}") as client:
        # The warm-up measured the model: 1 ms is hopeless, and with no
        # gateway configured the node says so rather than trying.
        with pytest.raises(Overloaded, match=r"of its 1 ms deadline.*no cloud gateway"):
            await client.infer("cnn-heavy", {"image": images}, deadline=0.001)
        assert (await client.status())["counters"]["refused"] == 1
        # The node is fine afterwards.
        out = await client.infer("cnn-heavy", {"image": images[:1]}, deadline=30)
        assert out["label"].shape == (1,)


async def test_mesh_key_node_accepts_the_key_and_refuses_others() -> None:
    async with running_node(node_config(mesh_key=KEY)) as node:
        address = f"127.0.0.1:{node.port}"
        async with MeshClient(address, mesh_key=KEY) as client:
            assert (await client.status())["auth"] is True
        with pytest.raises(AuthError):
            await MeshClient(address, mesh_key=b"another key entirely").connect()
        with pytest.raises(AuthError, match="requires a mesh key"):
            await MeshClient(address).connect()


# --- malformed traffic over raw sockets: each gets an answer or a close, and the node lives on


def infer_params(**tensor: Any) -> list[Any]:
    good = encode_tensors({"X": np.zeros((1, 64), np.float32)})["X"]
    good.update(tensor)
    return ["digits-small", {"X": good}]


@pytest.mark.parametrize(
    ("message", "code", "fragment"),
    [
        ([0, 1, "frobnicate", []], MethodNotFound.code, "no method 'frobnicate'"),
        ([0, 1, "infer", []], BadRequest.code, "got 0 params"),
        ([0, 1, "infer", ["digits-small"]], BadRequest.code, "got 1 params"),
        ([0, 1, "ping", [1, 2]], BadRequest.code, "takes no parameters"),
        ([0, 1, "infer", {"model": "digits-small"}], BadRequest.code, "params must be an array"),
        ([0, 1, 17, []], BadRequest.code, "method must be a string"),
        ([0, 1, "infer", infer_params(dtype="|O")], InvalidInput.code, "unsupported dtype '|O'"),
        ([0, 1, "infer", infer_params(shape=[1, 65])], InvalidInput.code, "needs 260 bytes"),
        ([0, 1, "infer", infer_params(data="text")], InvalidInput.code, "must be binary"),
        ([0, 1, "infer", ["digits-small", {"X": [1.0] * 64}]], InvalidInput.code, "tensor map"),
    ],
)
async def test_bad_requests_get_a_clear_error_response(
    message: list[Any], code: str, fragment: str
) -> None:
    async with running_node() as node:
        raw = await RawConnection.open(node.port)
        raw.send(message)
        reply = await raw.receive()
        assert reply[0] == 1 and reply[1] == 1
        assert reply[2][0] == code, reply
        assert fragment in reply[2][1]
        assert reply[3] is None
        # Same connection, next call: still served.
        assert await raw.call(2, "ping", []) == [1, 2, None, "pong"]
        await raw.close()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xc1\xc1\xc1 garbage", id="garbage bytes"),
        pytest.param(msgpack.packb({"not": "an array"}), id="a map where an array belongs"),
        pytest.param(msgpack.packb([9, 1, "ping", []]), id="unknown message type"),
        pytest.param(msgpack.packb([0, -5, "ping", []]), id="negative msgid"),
        pytest.param(
            b"\x94\x00\x01\xa5infer\x92\xacdigits-small\x81\xa1X\xc6\xff\xff\xff\xff",
            id="4 GiB declared length",
        ),
        pytest.param(b"\x91" * 10_000, id="nesting too deep"),
    ],
)
async def test_broken_streams_close_that_connection_and_the_node_keeps_serving(
    payload: bytes, digits: Digits
) -> None:
    async with running_node() as node:
        bystander = await RawConnection.open(node.port)
        raw = await RawConnection.open(node.port)
        raw.send_raw(payload)
        notice = await raw.receive()
        assert notice is not None, "the node should say why before closing"
        assert notice[:2] == [2, "error"]
        assert notice[2][0] in {"ProtocolError", "BadRequest", "MessageTooLarge"}
        assert await raw.receive() is None  # closed
        await raw.close()
        pixels, labels = digits
        reply = await bystander.call(
            7, "infer", ["digits-small", encode_tensors({"X": pixels[:5]})]
        )
        assert reply[2] is None
        predicted = np.frombuffer(reply[3]["label"]["data"], dtype="<i8")
        assert float(np.mean(predicted == labels[:5])) >= 0.8
        await bystander.close()


async def test_truncated_frame_then_disconnect_leaves_the_node_serving() -> None:
    async with running_node() as node:
        raw = await RawConnection.open(node.port)
        whole = msgpack.packb([0, 1, "infer", infer_params()], use_bin_type=True)
        raw.send_raw(whole[: len(whole) // 2])
        await raw.writer.drain()
        await raw.close()
        await asyncio.sleep(0.05)
        async with MeshClient(f"127.0.0.1:{node.port}") as client:
            assert await client.ping() > 0


async def test_a_users_own_onnx_file_is_served_under_its_file_name(
    tmp_path: Path, digits: Digits
) -> None:
    own = tmp_path / "my-digits.onnx"
    shutil.copy(MODELS_DIR / "digits-small.onnx", own)
    config = node_config(runtime=RuntimeConfig(model_dirs=(tmp_path,)))
    async with running_node(config) as node, MeshClient(f"127.0.0.1:{node.port}") as client:
        (info,) = await client.models()
        assert info.name == "my-digits"
        assert info.sha256 == hashlib.sha256(own.read_bytes()).hexdigest()
        pixels, labels = digits
        out = await client.infer("my-digits", {"X": pixels})
        assert float(np.mean(out["label"] == labels)) == pytest.approx(
            manifest_accuracy("digits-small"), abs=1e-12
        )


def random_object(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value, biased towards things that look like RPC and tensors."""
    choice = rng.randrange(12 if depth < 3 else 7)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-(2**40), 2**40)
    if choice == 3:
        return rng.random() * 1e6
    if choice == 4:
        return rng.choice(["infer", "ping", "models", "status", "hello", "X", "<f4", "|O", ""])
    if choice == 5:
        return rng.randbytes(rng.randrange(40))
    if choice == 6:
        return rng.randrange(3)
    if choice in (7, 8):
        return [random_object(rng, depth + 1) for _ in range(rng.randrange(5))]
    if choice == 9:
        return [
            0,
            rng.randrange(1000),
            random_object(rng, depth + 1),
            random_object(rng, depth + 1),
        ]
    if choice == 10:
        return {
            "dtype": rng.choice(["<f4", "|u1", "<f8", "|O", 5]),
            "shape": [rng.randrange(-1, 4) for _ in range(rng.randrange(3))],
            "data": rng.randbytes(rng.randrange(40)),
        }
    return {str(rng.randrange(5)): random_object(rng, depth + 1) for _ in range(rng.randrange(4))}


async def test_fuzzed_messages_never_take_the_node_down() -> None:
    """500 random messages, each chased by a ping on the same connection.

    Each message gets an error answer, or is a message that needs none (a
    stray response or notification), or breaks the stream, in which case the
    node says why and closes; the ping shows which. None takes the node down.
    """
    rng = random.Random(20261128)
    probe = 1_000_000
    async with running_node() as node:
        raw = await RawConnection.open(node.port)
        answered = closed = 0
        for msgid in range(500):
            message = random_object(rng)
            if rng.random() < 0.5:
                method = rng.choice(["infer", "ping", "models", "status", "nope"])
                message = [0, msgid, method, message if isinstance(message, list) else [message]]
            raw.send(message)
            raw.send([0, probe, "ping", []])
            while True:
                reply = await raw.receive()
                if reply is None or reply[:2] == [2, "error"]:
                    closed += 1
                    await raw.close()
                    raw = await RawConnection.open(node.port)
                    break
                assert reply[0] == 1, reply
                if reply[1] == probe:
                    assert reply[3] == "pong"
                    break
                if reply[2] is not None:
                    assert isinstance(reply[2][0], str)
                    assert isinstance(reply[2][1], str)
                answered += 1
        await raw.close()
        assert answered > 100
        assert closed > 10
        async with MeshClient(f"127.0.0.1:{node.port}") as client:
            assert (await client.status())["counters"]["in_flight"] == 0
            out = await client.infer("digits-small", {"X": np.zeros((2, 64), np.float32)})
            assert out["label"].shape == (2,)
