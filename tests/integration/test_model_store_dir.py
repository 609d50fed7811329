"""Where pulled and pushed models land: ``--model-store``, never the bundled models' folder.

The bundled directory may be inside the installed package (read-only, or
shared by every user of the machine), so a node that serves only it refuses
a push or a pull with the flag to use, and writes nothing; a node with a
store writes there, and a restarted node serves what it was given.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mesh.cli.model_commands import push_file
from mesh.config import RuntimeConfig, bundled_models_dir, load_node_config
from mesh.core.wire.model_transfer import PULL, PushBegin
from mesh.errors import ModelError
from mesh.rpc import RpcClient
from tests.helpers import MODELS_DIR
from tests.helpers.nodes import node_config, running_node

pytestmark = pytest.mark.timeout(60)

SOURCE = MODELS_DIR / "digits-large.onnx"


def begin(version: str) -> PushBegin:
    sha = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    return PushBegin("pushed", version, sha, SOURCE.stat().st_size)


def files_in(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()}


async def test_a_node_serving_only_the_bundled_models_refuses_to_write_into_them() -> None:
    assert MODELS_DIR.resolve() == bundled_models_dir().resolve()
    before = files_in(MODELS_DIR)
    async with running_node(node_config(name="bundled")) as node:
        async with RpcClient("127.0.0.1", node.port) as client:
            with pytest.raises(ModelError, match="--model-store DIR"):
                await push_file(client, SOURCE, begin("3"), timeout=20.0)
            with pytest.raises(ModelError, match="--model-store DIR"):
                await client.call(PULL, [{"name": "digits-large"}], timeout=20.0)
        assert "pushed" not in node.runtime
    assert files_in(MODELS_DIR) == before


async def test_a_pushed_model_lands_in_the_store_and_is_served_after_a_restart(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"  # not made yet: the node makes it
    runtime = RuntimeConfig(
        model_dirs=(store, MODELS_DIR),
        store_dir=store,
        reload_interval_s=0.0,
    )
    async with running_node(node_config(name="keeper", runtime=runtime)) as node:
        async with RpcClient("127.0.0.1", node.port) as client:
            answer = await push_file(client, SOURCE, begin("3"), timeout=20.0)
        assert (answer["name"], answer["version"]) == ("pushed", "3")
    landed = store / "pushed" / "3" / "model.onnx"
    assert landed.read_bytes() == SOURCE.read_bytes()
    async with running_node(node_config(name="keeper", runtime=runtime)) as node:
        assert [(s.version, s.sha256) for s in node.runtime.versions("pushed")] == [
            ("3", begin("3").sha256)
        ]


def test_model_store_is_a_flag_a_toml_key_and_a_variable(tmp_path: Path) -> None:
    store, other = tmp_path / "store", tmp_path / "mine"
    assert load_node_config({}, {}).runtime.store_dir is None
    by_flag = load_node_config({"model_store": str(store)}, {})
    assert by_flag.runtime.store_dir == store
    # First, so installs land there, and scanned with the bundled models.
    assert by_flag.runtime.model_dirs == (store, bundled_models_dir())
    toml = tmp_path / "node.toml"
    toml.write_text(f'models = ["{other}"]\nmodel_store = "{store}"\n')
    assert load_node_config({}, {}, toml).runtime.model_dirs == (store, other)
    by_env = load_node_config({"models": [str(other)]}, {"EDGEMESH_MODEL_STORE": str(store)})
    assert by_env.runtime.model_dirs == (store, other)
    same = load_node_config({"models": [str(store)], "model_store": str(store)}, {})
    assert same.runtime.model_dirs == (store,)
