"""Who may move models (issue 15 with issue 19's roles), and lying transfers refused.

A real keyed node on 127.0.0.1 with a client key as well. Reading a model's
file (``model_describe``, ``model_chunk``) is for mesh nodes only: a client,
even one holding the mesh key, gets Forbidden. Changing what a node serves
(``model_pull``, ``model_push_*``) needs the mesh key: a caller that proved
only the client key gets Forbidden. A push whose chunks lie about where they
go, or whose bytes are not the sha256 announced, is refused and leaves no
file behind.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from mesh.cli.model_commands import push_file
from mesh.config import NodeConfig, RuntimeConfig
from mesh.core.wire.model_transfer import (
    CHUNK,
    DESCRIBE,
    PULL,
    PUSH_BEGIN,
    PUSH_CHUNK,
    ModelRef,
    PushBegin,
)
from mesh.errors import BadRequest, Forbidden, ModelIntegrityError
from mesh.rpc import RpcClient
from tests.helpers import MODELS_DIR
from tests.helpers.nodes import node_config, running_node

pytestmark = pytest.mark.timeout(60)

KEY = b"model-transfer-mesh-key-0123456789"
CLIENT_KEY = b"model-transfer-client-key-01234567"
SMALL = MODELS_DIR / "digits-small.onnx"


def keyed_node(root: Path) -> NodeConfig:
    models = root / "models"
    models.mkdir()
    shutil.copy(SMALL, models)
    return node_config(
        name="keyed",
        mesh_key=KEY,
        client_key=CLIENT_KEY,
        runtime=RuntimeConfig(
            model_dirs=(models,), per_model_concurrency=1, executor_threads=1, reload_interval_s=0
        ),
    )


def sha256() -> str:
    return hashlib.sha256(SMALL.read_bytes()).hexdigest()


async def test_only_nodes_read_model_files_and_only_the_mesh_key_changes_them(
    tmp_path: Path,
) -> None:
    async with running_node(keyed_node(tmp_path)) as node:
        sha = sha256()
        chunk = [{"sha256": sha, "offset": 0, "length": 16}]
        async with RpcClient("127.0.0.1", node.port, key=KEY) as client:  # mesh key, a client
            for method, params in ((DESCRIBE, [{"sha256": sha}]), (CHUNK, chunk)):
                with pytest.raises(Forbidden):
                    await client.call(method, params)
        async with RpcClient("127.0.0.1", node.port, key=KEY, role="node", name="peer") as peer:
            described = await peer.call(DESCRIBE, [{"sha256": sha}])
            assert described["size"] == SMALL.stat().st_size
            assert await peer.call(CHUNK, chunk) == SMALL.read_bytes()[:16]

        begin = PushBegin("pushed", None, sha, SMALL.stat().st_size)
        async with RpcClient("127.0.0.1", node.port, key=CLIENT_KEY) as outsider:
            with pytest.raises(Forbidden, match="needs the mesh key"):
                await outsider.call(PULL, ModelRef("digits-large").to_params())
            with pytest.raises(Forbidden, match="needs the mesh key"):
                await outsider.call(PUSH_BEGIN, begin.to_params())
            assert "pushed" not in node.runtime

        async with RpcClient("127.0.0.1", node.port, key=KEY) as owner:
            answer = await push_file(owner, SMALL, begin, timeout=30.0)
        assert answer["name"] == "pushed" and "pushed" in node.runtime


async def test_lying_pushes_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    async with running_node(keyed_node(tmp_path)) as node:
        size = SMALL.stat().st_size
        async with RpcClient("127.0.0.1", node.port, key=KEY) as client:
            opened = await client.call(
                PUSH_BEGIN, PushBegin("liar", None, "1" * 64, size).to_params()
            )
            upload = opened["upload"]
            # A chunk far past the window: refused, and the upload is dropped.
            far = {"upload": upload, "offset": 64 * opened["max_chunk_bytes"], "data": b"x"}
            with pytest.raises(BadRequest, match="not expected"):
                await client.call(PUSH_CHUNK, [far])
            with pytest.raises(BadRequest, match="no upload"):
                await client.call(PUSH_CHUNK, [{**far, "offset": 0}])

            # The bytes are not the sha256 announced: refused at the end.
            lying = PushBegin("liar", None, "1" * 64, size)
            with pytest.raises(ModelIntegrityError):
                await push_file(client, SMALL, lying, timeout=30.0)
            # Bigger than it said: the last chunk overruns and is refused.
            short = PushBegin("liar", None, sha256(), size - 10)
            with pytest.raises(ModelIntegrityError, match="expected"):
                await push_file(client, SMALL, short, timeout=30.0)
        assert "liar" not in node.runtime
        assert not list((tmp_path / "models").rglob("*.part"))
        assert node.status()["transfer"]["uploads"] == 0
