"""Model versions on disk and the node's model store: layouts, pinning, install, reload.

Real runtimes and nodes over tiny ONNX models that answer a constant, so an
answer says which version ran.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mesh.config import RuntimeConfig
from mesh.core.membership.peers import ModelHolding
from mesh.errors import ConfigError, ModelError, ModelIntegrityError, ModelNotFound
from mesh.node.model_store import ModelStore
from mesh.node.versions import MeshVersions
from mesh.runtime.runtime import Runtime
from tests.helpers import MODELS_DIR
from tests.helpers.tiny_models import INPUT, OUTPUT, constant_model_bytes, write_constant_model

X = {INPUT: np.ones((1, 2), dtype=np.float32)}


def config(*dirs: Path) -> RuntimeConfig:
    return RuntimeConfig(
        model_dirs=dirs, per_model_concurrency=1, executor_threads=1, reload_interval_s=0
    )


async def answer(rt: Runtime, model: str, version: str | None = None) -> float:
    out = await rt.infer(model, X, version=version)
    return float(out[OUTPUT][0, 0])


async def test_the_three_layouts_give_versions(tmp_path: Path) -> None:
    write_constant_model(tmp_path / "m.onnx", 1.0)  # flat: version 1
    write_constant_model(tmp_path / "m" / "2" / "model.onnx", 2.0)  # Triton's layout
    write_constant_model(tmp_path / "m" / "10" / "any-name.onnx", 10.0)  # any one .onnx
    write_constant_model(tmp_path / "m" / ".hidden" / "model.onnx", 99.0)  # never served
    async with Runtime(config(tmp_path)) as rt:
        assert rt.names == ("m",)
        assert [s.version for s in rt.versions("m")] == ["1", "2", "10"]
        assert rt.spec("m").version == "10"  # the newest, by number
        assert await answer(rt, "m") == 10.0
        assert await answer(rt, "m", "2") == 2.0
        assert await answer(rt, "m", "1") == 1.0
        with pytest.raises(ModelNotFound) as caught:
            await answer(rt, "m", "7")
        assert caught.value.message == (
            "model 'm' has no version '7'; versions served: '1', '2', '10'"
        )


async def test_a_version_folder_with_two_files_and_no_model_onnx_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_constant_model(tmp_path / "m" / "1" / "a.onnx", 1.0)
    write_constant_model(tmp_path / "m" / "1" / "b.onnx", 2.0)
    write_constant_model(tmp_path / "m" / "2" / "model.onnx", 2.0)
    async with Runtime(config(tmp_path)) as rt:
        assert [s.version for s in rt.versions("m")] == ["2"]
    assert "holds 2 .onnx files and no model.onnx" in caplog.text


async def test_install_verifies_moves_and_serves(tmp_path: Path) -> None:
    models, incoming = tmp_path / "models", tmp_path / "incoming"
    write_constant_model(models / "m.onnx", 1.0)
    rt = Runtime(config(models))
    try:
        store = ModelStore(rt)
        data = constant_model_bytes(2.0)
        sha = hashlib.sha256(data).hexdigest()
        arrived = incoming / "part"
        arrived.parent.mkdir()
        arrived.write_bytes(data)
        spec = await store.install(arrived, name="m", version=None, sha256=sha)
        assert (spec.name, spec.version, spec.sha256) == ("m", "2", sha)
        assert not arrived.exists()
        assert store.file_of(sha) == models / "m" / "2" / "model.onnx"
        assert [(s.name, s.version) for s in store.holding()] == [("m", "1"), ("m", "2")]
        assert await answer(rt, "m") == 2.0
        # The same file again, with its version: nothing to do.
        arrived.write_bytes(data)
        assert (await store.install(arrived, name="m", version="2", sha256=sha)) == spec
        assert not arrived.exists()
    finally:
        await rt.aclose()


async def test_install_refuses_a_file_that_is_not_what_was_promised(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    rt = Runtime(config(models))
    try:
        store = ModelStore(rt)
        arrived = tmp_path / "part"
        arrived.write_bytes(constant_model_bytes(2.0))
        with pytest.raises(ModelIntegrityError, match="refusing to serve it"):
            await store.install(arrived, name="m", version="1", sha256="0" * 64)
        assert not arrived.exists()
        assert not (models / "m" / "1").exists()
        assert rt.names == ()
        arrived.write_bytes(b"not onnx")
        with pytest.raises(ModelError, match="onnxruntime cannot load"):
            await store.install(
                arrived, name="m", version=None, sha256=hashlib.sha256(b"not onnx").hexdigest()
            )
        assert not arrived.exists()
        assert list(models.rglob("*")) == [] or all(p.is_dir() for p in models.rglob("*"))
        arrived.write_bytes(b"x")
        with pytest.raises(ModelError, match="is not a version"):
            await store.install(arrived, name="m", version="../1", sha256="0" * 64)
        assert store.file_of("0" * 64) is None
    finally:
        await rt.aclose()


async def test_reload_adds_replaces_removes_and_keeps_a_version_that_fails(
    tmp_path: Path,
) -> None:
    write_constant_model(tmp_path / "m.onnx", 1.0)
    rt = Runtime(config(tmp_path))
    try:
        store = ModelStore(rt)
        assert (await store.reload()).to_wire() == {"added": [], "retired": [], "failed": []}

        write_constant_model(tmp_path / "n" / "1" / "model.onnx", 5.0)
        report = await store.reload()
        assert [(s.name, s.version) for s in report.added] == [("n", "1")]
        assert rt.names == ("m", "n")

        write_constant_model(tmp_path / "m.onnx", 2.0)  # replaced in place
        report = await store.reload()
        assert [(s.name, s.version) for s in report.added] == [("m", "2")]
        assert [(s.name, s.version) for s in report.retired] == [("m", "1")]
        assert await answer(rt, "m") == 2.0
        assert [s.version for s in rt.versions("m")] == ["2"]
        assert [s.version for s in store.retiring()] == ["1"]

        (tmp_path / "m.onnx").write_bytes(b"broken")  # a bad copy: version 2 stays
        report = await store.reload()
        assert report.added == () and report.retired == ()
        assert [path for path, _ in report.failed] == [str(tmp_path / "m.onnx")]
        assert await answer(rt, "m") == 2.0
        assert (await store.reload()).failed == ()  # not tried again until it changes
        write_constant_model(tmp_path / "m.onnx", 3.0)  # a good copy at last
        report = await store.reload()
        assert [(s.name, s.version) for s in report.added] == [("m", "3")]
        assert await answer(rt, "m") == 3.0

        (tmp_path / "n" / "1" / "model.onnx").unlink()
        report = await store.reload()
        assert [(s.name, s.version) for s in report.retired] == [("n", "1")]
        assert "n" not in rt and list(rt.names) == ["m"]
        with pytest.raises(ModelNotFound):
            await answer(rt, "n")
    finally:
        await rt.aclose()


async def test_the_version_a_request_gets_follows_the_peers(tmp_path: Path) -> None:
    write_constant_model(tmp_path / "m.onnx", 1.0)
    rt = Runtime(config(tmp_path))
    try:
        versions = MeshVersions(rt)
        mine = rt.spec("m").sha256
        theirs = "b2" * 32
        assert versions.resolve("m", None) == mine
        versions.peer("b", (ModelHolding("m", theirs, "2"), ModelHolding("m", "c3" * 32)))
        assert versions.resolve("m", None) == theirs  # newer, on a peer
        assert versions.resolve("m", "1") == mine
        assert versions.labels("m") == ["1", "2"]  # an unlabelled holding counts for none
        versions.peer_gone("b")
        assert versions.resolve("m", None) == mine
        assert versions.resolve("nobody-has-it", None) is None
        with pytest.raises(ModelNotFound, match="versions served: '1'"):
            versions.resolve("m", "2")
    finally:
        await rt.aclose()


async def test_an_installed_model_survives_reloads_beside_a_manifest_and_a_model_filter(
    tmp_path: Path,
) -> None:
    # The bundled layout: a manifest listing digits-small and digits-large,
    # and a node told to serve only digits-small.
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models)
    settings = replace(config(models), model_names=("digits-small",))
    rt = Runtime(settings)
    try:
        store = ModelStore(rt)
        arrived = tmp_path / "part"
        arrived.write_bytes((MODELS_DIR / "digits-large.onnx").read_bytes())
        sha = hashlib.sha256(arrived.read_bytes()).hexdigest()
        spec = await store.install(arrived, name="digits-large", version=None, sha256=sha)
        # Numbered after the manifest's own version 1, which the manifest keeps.
        assert (spec.name, spec.version, spec.source) == ("digits-large", "2", "file")
        # A node told to serve a model serves it whatever --model says: the
        # manifest's own version too, once a reload sees it (the same file).
        report = await store.reload()
        assert [(a.name, a.version, a.sha256) for a in report.added] == [("digits-large", "1", sha)]
        assert report.retired == ()
        assert (await store.reload()).added == ()
        assert rt.names == ("digits-large", "digits-small")
        assert [s.version for s in rt.versions("digits-large")] == ["1", "2"]
        # Either file will do for a peer that asks: they are the same bytes.
        served = store.file_of(sha)
        assert served in {
            models / "digits-large" / "2" / "model.onnx",
            models / "digits-large.onnx",
        }
        assert hashlib.sha256(served.read_bytes()).hexdigest() == sha
    finally:
        await rt.aclose()


async def test_a_version_folder_beside_a_manifest_entry_is_another_version(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS_DIR, models)
    write_constant_model(models / "cnn-heavy" / "2" / "model.onnx", 2.0)
    async with Runtime(config(models)) as rt:
        assert [(s.version, s.source) for s in rt.versions("cnn-heavy")] == [
            ("1", "manifest"),
            ("2", "file"),
        ]
        assert await answer(rt, "cnn-heavy") == 2.0


async def test_two_files_claiming_one_version_the_serving_one_stays(tmp_path: Path) -> None:
    write_constant_model(tmp_path / "m.onnx", 1.0)  # m version 1
    rt = Runtime(config(tmp_path))
    try:
        store = ModelStore(rt)
        clash = write_constant_model(tmp_path / "m" / "1" / "model.onnx", 5.0)
        report = await store.reload()
        assert report.added == () and report.retired == ()
        assert [(path, why.split(";")[0]) for path, why in report.failed] == [
            (str(clash), f"{tmp_path / 'm.onnx'} is already model 'm' version '1'")
        ]
        assert await answer(rt, "m") == 1.0
        assert (await store.reload()).failed == ()  # said once, until the file changes
        # A node started now would refuse the pair too (and say which files).
        with pytest.raises(ConfigError, match="two models are named 'm', both version '1'"):
            Runtime(config(tmp_path))
    finally:
        await rt.aclose()
