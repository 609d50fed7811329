"""Checks on the committed model artifacts in ``models/``.

Only the run-time stack is used here (onnxruntime, numpy, tomllib): the tests
must pass on an install without the ``models`` build extra.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
MANIFEST = MODELS_DIR / "manifest.toml"
DIGITS_MODELS = ("digits-small", "digits-large")

ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _describe(args: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": arg.name,
            "dtype": ORT_DTYPES[arg.type],
            "shape": [dim if isinstance(dim, int) else -1 for dim in arg.shape],
        }
        for arg in args
    ]


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    with MANIFEST.open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def dataset(manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS_DIR / manifest["dataset"]["file"]) as data:
        return data["X"], data["y"]


@pytest.fixture(scope="module")
def sessions(manifest: dict[str, Any]) -> dict[str, ort.InferenceSession]:
    return {
        name: _session(MODELS_DIR / entry["file"]) for name, entry in manifest["models"].items()
    }


def test_manifest_lists_the_bundled_models(manifest: dict[str, Any]) -> None:
    assert set(manifest["models"]) == {"digits-small", "digits-large", "cnn-heavy"}
    for name, entry in manifest["models"].items():
        assert entry["file"] == f"{name}.onnx"
        assert entry["version"] == "1"
        assert entry["description"]
        assert entry["compute_only"] is (name == "cnn-heavy")
        assert ("accuracy" in entry) is (name in DIGITS_MODELS)


def test_files_exist_and_hashes_match(manifest: dict[str, Any]) -> None:
    for entry in (*manifest["models"].values(), manifest["dataset"]):
        path = MODELS_DIR / entry["file"]
        assert path.is_file(), path
        assert _sha256(path) == entry["sha256"], path


def test_dataset_matches_manifest(
    manifest: dict[str, Any], dataset: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = dataset
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert x.shape == (manifest["dataset"]["samples"], 64)
    assert y.shape == (manifest["dataset"]["samples"],)
    assert x.min() >= 0.0
    assert x.max() <= 16.0
    assert set(np.unique(y)) == set(range(10))


def test_declared_io_matches_session(
    manifest: dict[str, Any], sessions: dict[str, ort.InferenceSession]
) -> None:
    for name, entry in manifest["models"].items():
        session = sessions[name]
        assert entry["inputs"] == _describe(session.get_inputs()), name
        assert entry["outputs"] == _describe(session.get_outputs()), name


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_digits_accuracy_matches_manifest(
    name: str,
    manifest: dict[str, Any],
    sessions: dict[str, ort.InferenceSession],
    dataset: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = dataset
    (labels,) = sessions[name].run(["label"], {"X": x})
    accuracy = float(np.mean(labels == y))
    assert accuracy == pytest.approx(manifest["models"][name]["accuracy"], abs=1e-9)
    assert accuracy > 0.9


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_digits_output_shapes_and_dtypes(
    name: str,
    sessions: dict[str, ort.InferenceSession],
    dataset: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = dataset
    for batch in (x[:1], x[:7], x):
        labels, probabilities = sessions[name].run(["label", "probabilities"], {"X": batch})
        n = batch.shape[0]
        assert labels.dtype == np.int64
        assert labels.shape == (n,)
        assert probabilities.dtype == np.float32
        assert probabilities.shape == (n, 10)
        assert np.all(probabilities >= 0.0)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))


def test_large_is_more_accurate_than_small(manifest: dict[str, Any]) -> None:
    models = manifest["models"]
    assert models["digits-large"]["accuracy"] > models["digits-small"]["accuracy"]


def test_cnn_heavy_runs_on_a_batch(sessions: dict[str, ort.InferenceSession]) -> None:
    session = sessions["cnn-heavy"]
    (image,) = session.get_inputs()
    assert image.name == "image"
    shape = [2, *image.shape[1:]]
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    labels, probabilities = session.run(["label", "probabilities"], {"image": batch})
    classes = probabilities.shape[1]
    assert labels.dtype == np.int64
    assert labels.shape == (2,)
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (2, classes)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all((labels >= 0) & (labels < classes))
