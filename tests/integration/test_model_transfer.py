"""Models travel peer to peer: pull, push, a corrupted copy refused, ``--fetch-models``.

Real nodes in one event loop on 127.0.0.1, each serving its own temporary
model directory (copies of the bundled models) with its reload interval off,
so that a file changed on disk under a holder keeps being advertised and
served as the version it loaded: the real fault a puller must catch. The
other fault is a holder that dies (as SIGKILL would) in the middle of a copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh.cli.model_commands import push_file
from mesh.config import MeshConfig, RuntimeConfig, load_node_config
from mesh.core.wire.model_transfer import PULL, ModelRef, PushBegin
from mesh.core.wire.tensors import decode_tensors, encode_tensors
from mesh.errors import ModelIntegrityError, ModelNotFound, ModelTransferFailed
from mesh.node.node import Node
from mesh.rpc import RpcClient
from tests.helpers import MODELS_DIR
from tests.helpers.cli import run_edgemesh
from tests.helpers.nodes import converged, crash, node_config, running_node

pytestmark = pytest.mark.timeout(90)

LARGE = "digits-large"


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_dir(root: Path, name: str, models: Sequence[str]) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    for model in models:
        shutil.copy(MODELS_DIR / f"{model}.onnx", directory / f"{model}.onnx")
    return directory


@contextlib.asynccontextmanager
async def mesh(
    root: Path, layout: Mapping[str, Sequence[str]], **overrides: Any
) -> AsyncIterator[dict[str, Node]]:
    """One node per entry of ``layout`` (name: its models), all bootstrapped from the first."""
    async with contextlib.AsyncExitStack() as stack:
        nodes: dict[str, Node] = {}
        for name, models in layout.items():
            first = next(iter(nodes.values()), None)
            config = node_config(
                name=name,
                mesh=MeshConfig(
                    mdns=False,
                    peers=() if first is None else (f"127.0.0.1:{first.port}",),
                    gossip_interval_s=0.05,
                ),
                runtime=RuntimeConfig(
                    model_dirs=(model_dir(root, name, models),),
                    per_model_concurrency=1,
                    executor_threads=1,
                    reload_interval_s=0.0,
                ),
                **overrides.get(name, {}),
            )
            nodes[name] = await stack.enter_async_context(running_node(config))
        await converged(list(nodes.values()))
        yield nodes


async def rpc(node: Node, method: str, params: list[Any], timeout: float = 30.0) -> Any:
    async with RpcClient("127.0.0.1", node.port) as client:
        return await client.call(method, params, timeout=timeout)


def digits() -> np.ndarray[Any, Any]:
    with np.load(MODELS_DIR / "digits-test.npz") as data:
        return np.ascontiguousarray(data["X"][:32])


async def infer_detail(node: Node, model: str) -> dict[str, Any]:
    answer = await rpc(node, "infer", [model, encode_tensors({"X": digits()}), {"detail": True}])
    assert isinstance(answer, dict)
    return answer


def serves(node: Node, sha256: str) -> bool:
    return any(spec.sha256 == sha256 for spec in node.model_store.holding())


async def test_a_pulled_model_is_the_holders_byte_for_byte_and_answers_alike(
    tmp_path: Path,
) -> None:
    async with mesh(tmp_path, {"holder": [LARGE, "cnn-heavy"], "puller": ["digits-small"]}) as n:
        holder, puller = n["holder"], n["puller"]
        sha = sha_of(MODELS_DIR / f"{LARGE}.onnx")
        before = await infer_detail(puller, LARGE)
        assert before["ran_on"] == "holder"  # routed to the holder while it lacks it

        report = await rpc(puller, PULL, ModelRef(LARGE).to_params())
        assert report["source"] == "holder"
        assert (report["name"], report["sha256"], report["rejected"]) == (LARGE, sha, [])
        assert report["size"] == (MODELS_DIR / f"{LARGE}.onnx").stat().st_size
        assert serves(puller, sha)
        path = puller.model_store.file_of(sha)
        assert path is not None and path.is_relative_to(tmp_path / "puller")
        assert sha_of(path) == sha
        # No temporary copy is left behind.
        assert not list((tmp_path / "puller").rglob("*.part"))

        after = await infer_detail(puller, LARGE)
        assert after["ran_on"] == "puller"
        for name, tensor in decode_tensors(before["outputs"]).items():
            np.testing.assert_array_equal(decode_tensors(after["outputs"])[name], tensor)

        # Pulled again: already served, nothing moves.
        again = await rpc(puller, PULL, ModelRef(LARGE).to_params())
        assert again["source"] is None and again["sha256"] == sha

        # A file of more than one chunk, pinned to the version the holder serves.
        heavy = holder.runtime.spec("cnn-heavy")
        report = await rpc(puller, PULL, ModelRef("cnn-heavy", heavy.version).to_params())
        assert report["source"] == "holder" and report["size"] > 1024 * 1024
        assert serves(puller, heavy.sha256)
        assert puller.status()["transfer"]["pulled"] == 2


async def test_pulls_of_one_model_at_once_share_one_copy(tmp_path: Path) -> None:
    async with mesh(tmp_path, {"holder": ["cnn-heavy"], "puller": ["digits-small"]}) as n:
        sha = n["holder"].runtime.spec("cnn-heavy").sha256
        reports = await asyncio.gather(
            *(rpc(n["puller"], PULL, ModelRef("cnn-heavy").to_params()) for _ in range(3))
        )
        assert {r["sha256"] for r in reports} == {sha}
        assert {r["source"] for r in reports} <= {"holder", None}
        assert n["puller"].status()["transfer"]["pulled"] == 1
        versions = [s for s in n["puller"].model_store.holding() if s.name == "cnn-heavy"]
        assert len(versions) == 1


@pytest.mark.parametrize("fault", ["overwritten", "truncated"])
async def test_a_corrupted_copy_is_refused_and_fetched_from_a_healthy_holder(
    tmp_path: Path, fault: str
) -> None:
    layout = {"a-bad": [LARGE], "b-puller": ["digits-small"], "c-good": [LARGE]}
    async with mesh(tmp_path, layout) as n:
        sha = sha_of(MODELS_DIR / f"{LARGE}.onnx")
        # A real fault: the file under a running holder changes after it was
        # loaded; with reload off it still advertises and serves the old sha256.
        bad_file = n["a-bad"].model_store.file_of(sha)
        assert bad_file is not None
        data = bad_file.read_bytes()
        if fault == "overwritten":
            bad_file.write_bytes(bytes(b ^ 0xFF for b in data[:4096]) + data[4096:])
        else:
            bad_file.write_bytes(data[: len(data) // 2])
        assert serves(n["a-bad"], sha)

        report = await rpc(n["b-puller"], PULL, ModelRef(LARGE).to_params())
        assert report["source"] == "c-good"
        assert [r["peer"] for r in report["rejected"]] == ["a-bad"]
        reason = report["rejected"][0]["reason"]
        assert reason.startswith("ModelIntegrityError: digits-large: the bytes received"), reason
        path = n["b-puller"].model_store.file_of(sha)
        assert path is not None and sha_of(path) == sha
        assert n["b-puller"].status()["transfer"]["copies_rejected"] == 1
        assert not list((tmp_path / "b-puller").rglob("*.part"))


def write_big_model(path: Path, side: int = 2560) -> None:
    """A MatMul model with random float32 weights: side x side x 4 bytes (25 MiB by default)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(1).standard_normal((side, side), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "big",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, side])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, side])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def started_writing(directory: Path) -> bool:
    """Whether a temporary copy in ``directory`` holds any bytes yet."""
    for part in directory.glob("*.part"):
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_size > 0:
                return True
    return False


async def test_a_holder_that_dies_mid_copy_is_replaced_by_the_next(tmp_path: Path) -> None:
    write_big_model(tmp_path / "big.onnx")
    layout = ("a-dies", "b-puller", "c-good")
    for holder in ("a-dies", "c-good"):
        (tmp_path / holder).mkdir()
        shutil.copy(tmp_path / "big.onnx", tmp_path / holder / "big.onnx")
    async with contextlib.AsyncExitStack() as stack:
        nodes: dict[str, Node] = {}
        for name in layout:
            first = next(iter(nodes.values()), None)
            models = tmp_path / name
            if name == "b-puller":
                models = model_dir(tmp_path / "puller-root", name, ["digits-small"])
            config = node_config(
                name=name,
                mesh=MeshConfig(
                    mdns=False,
                    peers=() if first is None else (f"127.0.0.1:{first.port}",),
                    gossip_interval_s=0.05,
                ),
                runtime=RuntimeConfig(
                    model_dirs=(models,),
                    per_model_concurrency=1,
                    executor_threads=1,
                    reload_interval_s=0.0,
                ),
            )
            nodes[name] = await stack.enter_async_context(running_node(config))
        await converged(list(nodes.values()))
        puller = nodes["b-puller"]
        pull = asyncio.ensure_future(puller.transfer.pull(ModelRef("big")))
        stack.callback(pull.cancel)  # (a no-op once it is done)
        incoming = tmp_path / "puller-root" / "b-puller"
        # A real fault: the holder being copied from dies (as SIGKILL would)
        # once its first chunk has landed, and the copy goes on elsewhere.
        async with asyncio.timeout(20):
            while not started_writing(incoming):
                assert not pull.done(), "the copy ended before the holder could die"
                await asyncio.sleep(0.001)
        await crash(nodes["a-dies"])
        report = await pull
        assert report.source == "c-good"
        assert [peer for peer, _ in report.rejected] == ["a-dies"]
        assert report.rejected[0][1].startswith(("PeerUnavailable", "RpcTimeout")), report
        path = puller.model_store.file_of(sha_of(tmp_path / "big.onnx"))
        assert path is not None and sha_of(path) == sha_of(tmp_path / "big.onnx")
        assert not list(incoming.rglob("*.part"))


async def test_no_holder_and_no_good_holder_are_typed_errors(tmp_path: Path) -> None:
    async with mesh(tmp_path, {"bad": [LARGE], "puller": ["digits-small"]}) as n:
        with pytest.raises(ModelNotFound, match="no live peer serves model 'nowhere'"):
            await rpc(n["puller"], PULL, ModelRef("nowhere").to_params())
        with pytest.raises(ModelNotFound, match="no live peer serves"):
            await rpc(n["puller"], PULL, ModelRef(LARGE, "99").to_params())

        sha = sha_of(MODELS_DIR / f"{LARGE}.onnx")
        bad_file = n["bad"].model_store.file_of(sha)
        assert bad_file is not None
        bad_file.write_bytes(b"\0" * bad_file.stat().st_size)
        with pytest.raises(ModelTransferFailed, match="no peer delivered a verified copy") as err:
            await rpc(n["puller"], PULL, ModelRef(LARGE).to_params())
        assert "bad: ModelIntegrityError" in err.value.message
        # Never served unverified.
        assert not serves(n["puller"], sha)
        assert LARGE not in n["puller"].runtime


async def test_a_pushed_model_is_verified_and_served(tmp_path: Path) -> None:
    async with mesh(tmp_path, {"target": ["digits-small"]}) as n:
        target = n["target"]
        source = MODELS_DIR / "cnn-heavy.onnx"
        sha = sha_of(source)
        begin = PushBegin("pushed", "7", sha, source.stat().st_size)
        async with RpcClient("127.0.0.1", target.port) as client:
            answer = await push_file(client, source, begin, timeout=30.0, window=2)
        assert (answer["name"], answer["version"], answer["sha256"]) == ("pushed", "7", sha)
        assert serves(target, sha) and target.runtime.spec("pushed").sha256 == sha

        # A push whose bytes are not the sha256 it announced is refused, not served.
        lying = PushBegin("liar", None, "0" * 64, source.stat().st_size)
        async with RpcClient("127.0.0.1", target.port) as client:
            with pytest.raises(ModelIntegrityError, match="not the 000000000000 promised"):
                await push_file(client, source, lying, timeout=30.0)
        assert "liar" not in target.runtime
        assert not list((tmp_path / "target").rglob("*.part"))


async def test_fetch_models_pulls_what_the_node_is_asked_for_in_the_background(
    tmp_path: Path,
) -> None:
    layout = {"holder": [LARGE], "fetcher": ["digits-small"]}
    async with mesh(tmp_path, layout, fetcher={"fetch_models": True}) as n:
        fetcher = n["fetcher"]
        sha = sha_of(MODELS_DIR / f"{LARGE}.onnx")
        first = await infer_detail(fetcher, LARGE)
        assert first["ran_on"] == "holder"  # served as today, meanwhile
        async with asyncio.timeout(20):
            while not serves(fetcher, sha):  # noqa: ASYNC110 (no event says a pull landed)
                await asyncio.sleep(0.05)
        assert (await infer_detail(fetcher, LARGE))["ran_on"] == "fetcher"
        assert fetcher.status()["transfer"]["pulled"] == 1

    # Off by default: the same request leaves a node without the model.
    async with mesh(tmp_path / "off", {"holder": [LARGE], "plain": ["digits-small"]}) as n:
        await infer_detail(n["plain"], LARGE)
        await asyncio.sleep(0.3)
        assert not serves(n["plain"], sha) and n["plain"].status()["transfer"]["pulled"] == 0


def test_fetch_models_is_a_flag_a_toml_key_and_a_variable(tmp_path: Path) -> None:
    assert load_node_config({}, {}).fetch_models is False
    assert load_node_config({"fetch_models": True}, {}).fetch_models is True
    assert load_node_config({}, {"EDGEMESH_FETCH_MODELS": "yes"}).fetch_models is True
    toml = tmp_path / "node.toml"
    toml.write_text("fetch_models = true\n")
    assert load_node_config({}, {}, toml).fetch_models is True


async def test_the_pull_and_push_commands_say_what_happened(tmp_path: Path) -> None:
    async with mesh(tmp_path, {"holder": [LARGE], "puller": ["digits-small"]}) as n:
        node = f"127.0.0.1:{n['puller'].port}"
        status, out, err = await run_edgemesh("models", "pull", LARGE, "--node", node)
        assert status == 0, err
        assert f"{node} now serves {LARGE} version" in out
        assert "200.5 KiB" in out and "from holder in" in out

        status, out, _ = await run_edgemesh("models", "pull", LARGE, "--node", node)
        assert status == 0 and f"{node} already serves {LARGE}" in out

        status, _, err = await run_edgemesh("models", "pull", "nowhere:3", "--node", node)
        assert status == 1
        assert err.startswith("edgemesh: ModelNotFound: no live peer serves model 'nowhere:3'")

        model = tmp_path / "mine.onnx"
        shutil.copy(MODELS_DIR / "digits-small.onnx", model)
        args = ("models", "push", str(model), "--node", node, "--version", "5")
        status, out, err = await run_edgemesh(*args)
        assert status == 0, err
        assert f"{node} now serves mine version 5: 4.3 KiB" in out
        assert "mine" in n["puller"].runtime

        status, _, err = await run_edgemesh("models", "push", str(tmp_path / "absent.onnx"))
        assert status == 2 and "cannot read" in err
