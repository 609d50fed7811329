"""Build the bundled edgemesh models and their manifest, reproducibly.

Run from anywhere with ``python models/build.py``. The script needs the
build-time extra (``pip install -e '.[models]'``: scikit-learn, skl2onnx,
onnx) plus onnxruntime and numpy; none of the build-time packages are needed
to *serve* the artifacts it writes.

It writes, next to this file:

``digits-small.onnx``
    Standard scaling + multinomial logistic regression on the 8x8 digits
    data set. The edge model: tiny and fast.
``digits-large.onnx``
    Standard scaling + a two-hidden-layer MLP (256, 128). The cloud model:
    larger, slower and more accurate.
``cnn-heavy.onnx``
    A ResNet-style convolutional network over ``[N, 3, 64, 64]`` images with
    fixed-seed *random* weights. Compute-only: it exists to generate
    realistic CPU load, and its predictions mean nothing.
``digits-test.npz``
    The held-out split (``X`` float32 ``[N, 64]``, ``y`` int64 ``[N]``).
``manifest.toml``
    One table per model (file, sha256, declared inputs and outputs, and the
    accuracy measured by running the ONNX file with onnxruntime) and a
    ``[dataset]`` table for the held-out split.

All randomness is seeded and every serialised byte that could vary between
runs (graph names, producer fields, zip timestamps) is pinned, so rebuilding
with the same library versions yields identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import statistics
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODELS_DIR = Path(__file__).resolve().parent
MANIFEST_NAME = "manifest.toml"
DATASET_NAME = "digits-test.npz"

SEED = 0
TEST_SIZE = 0.25
SPLIT_DESCRIPTION = "sklearn load_digits, test_size=0.25, random_state=0, stratified"

# Opsets every onnxruntime release of the last few years can run.
ONNX_OPSET = 17
ONNX_ML_OPSET = 3
IR_VERSION = 8  # the IR version that goes with opset 17

PRODUCER_NAME = "edgemesh-models-build"
PRODUCER_VERSION = "1"
MODEL_VERSION = "1"

DIGITS_FEATURES = 64
DIGITS_CLASSES = 10

CNN_IMAGE_SHAPE = (3, 64, 64)
CNN_CLASSES = 10
CNN_STEM_CHANNELS = 56
# (output channels, stride) for each residual block after the stem. Compute
# is spent at full 64x64 resolution, where it costs few parameters, so the
# file stays under 2 MB while one image takes ~20 ms on one CPU thread.
CNN_BLOCKS: tuple[tuple[int, int], ...] = (
    (56, 1),
    (56, 1),
    (56, 1),
    (64, 2),
    (64, 1),
    (96, 2),
)

BATCH_DIM = "N"

# onnxruntime type strings -> numpy dtype names used in the manifest.
ORT_DTYPES: Mapping[str, str] = {
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


@dataclass(frozen=True)
class Split:
    """The fixed train/test split of the digits data set."""

    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype name and shape (``-1`` for dynamic) of one tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BuiltModel:
    """A model written to disk, with what the manifest records about it."""

    name: str
    path: Path
    description: str
    compute_only: bool
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    accuracy: float | None
    ms_per_sample: float


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def load_split() -> Split:
    """Load the bundled digits data and split it the documented way."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32),
        y.astype(np.int64),
        test_size=TEST_SIZE,
        random_state=SEED,
        stratify=y,
    )
    return Split(x_train, x_test, y_train, y_test)


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an ``.npz`` that ``np.load`` reads, with fixed zip timestamps.

    ``np.savez`` stamps each member with the current time, so two builds
    would differ byte-for-byte; this writes the same container by hand.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    path.write_bytes(buffer.getvalue())


# --------------------------------------------------------------------------
# scikit-learn models
# --------------------------------------------------------------------------


def train_small(split: Split) -> Pipeline:
    """Train the edge model: scaling + multinomial logistic regression."""
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(max_iter=1000, random_state=SEED)),
        ]
    )
    return model.fit(split.x_train, split.y_train)


def train_large(split: Split) -> Pipeline:
    """Train the cloud model: scaling + an MLP with two wide hidden layers."""
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "clf",
                MLPClassifier(
                    hidden_layer_sizes=(256, 128),
                    alpha=0.1,
                    max_iter=1000,
                    random_state=SEED,
                ),
            ),
        ]
    )
    return model.fit(split.x_train, split.y_train)


def sklearn_to_onnx(model: Pipeline, name: str) -> onnx.ModelProto:
    """Convert a fitted classifier pipeline to ONNX with plain tensor outputs."""
    converted = convert_sklearn(
        model,
        name=name,
        initial_types=[("X", FloatTensorType([None, DIGITS_FEATURES]))],
        target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
        options={id(model.steps[-1][1]): {"zipmap": False}},
    )
    if not isinstance(converted, onnx.ModelProto):
        raise TypeError(f"skl2onnx returned {type(converted).__name__}, not a ModelProto")
    graph_outputs = [output.name for output in converted.graph.output]
    if len(graph_outputs) != 2:
        raise ValueError(f"expected a label and a probability output, got {graph_outputs}")
    rename_tensors(
        converted.graph, dict(zip(graph_outputs, ("label", "probabilities"), strict=True))
    )
    return normalise(converted, name)


def rename_tensors(graph: onnx.GraphProto, renames: Mapping[str, str]) -> None:
    """Rename tensors everywhere they occur in ``graph`` (not in subgraphs)."""
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = renames.get(value.name, value.name)


def normalise(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Pin every field that could vary between builds and name the batch dim."""
    model.ir_version = IR_VERSION
    model.producer_name = PRODUCER_NAME
    model.producer_version = PRODUCER_VERSION
    model.domain = ""
    model.model_version = 1
    model.doc_string = ""
    del model.metadata_props[:]
    model.graph.name = name
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""

    # Some converters list a domain twice; keep the highest version of each.
    opsets: dict[str, int] = {}
    for entry in model.opset_import:
        opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    del model.opset_import[:]
    for domain in sorted(opsets):
        model.opset_import.append(helper.make_opsetid(domain, opsets[domain]))

    # Give the (unnamed) dynamic leading dimension a name on every I/O tensor.
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM

    onnx.checker.check_model(model, full_check=True)
    return model


# --------------------------------------------------------------------------
# The compute-heavy CNN
# --------------------------------------------------------------------------


class _CnnBuilder:
    """Accumulates nodes and He-initialised weights for a small ResNet."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def _name(self, prefix: str) -> str:
        index = self._counts.get(prefix, 0)
        self._counts[prefix] = index + 1
        return f"{prefix}{index}"

    def _weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(
        self, x: str, c_in: int, c_out: int, kernel: int, stride: int, gain: float = 1.0
    ) -> str:
        name = self._name("conv")
        std = gain * np.sqrt(2.0 / (c_in * kernel * kernel))
        weight = self._weight(
            f"{name}.weight", self.rng.normal(0.0, std, size=(c_out, c_in, kernel, kernel))
        )
        bias = self._weight(f"{name}.bias", self.rng.normal(0.0, 0.01, size=(c_out,)))
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, weight, bias],
                [name],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
            )
        )
        return name

    def op(
        self, op_type: str, inputs: Sequence[str], output: str | None = None, **attrs: Any
    ) -> str:
        name = self._name(op_type.lower())
        out = output if output is not None else name
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out

    def residual_block(self, x: str, c_in: int, c_out: int, stride: int) -> str:
        h = self.op("Relu", [self.conv(x, c_in, c_out, 3, stride)])
        # A damped second conv keeps activations bounded through the residual sum.
        h = self.conv(h, c_out, c_out, 3, 1, gain=0.5)
        shortcut = x if stride == 1 and c_in == c_out else self.conv(x, c_in, c_out, 1, stride)
        return self.op("Relu", [self.op("Add", [h, shortcut])])

    def dense(self, x: str, c_in: int, c_out: int) -> str:
        name = self._name("fc")
        weight = self._weight(
            f"{name}.weight", self.rng.normal(0.0, np.sqrt(1.0 / c_in), size=(c_out, c_in))
        )
        bias = self._weight(f"{name}.bias", np.zeros(c_out))
        self.nodes.append(helper.make_node("Gemm", [x, weight, bias], [name], name=name, transB=1))
        return name


def build_cnn(name: str) -> onnx.ModelProto:
    """Build the compute-only ResNet-style CNN with fixed-seed random weights."""
    builder = _CnnBuilder(np.random.default_rng(SEED))
    channels = CNN_IMAGE_SHAPE[0]
    x = builder.op("Relu", [builder.conv("image", channels, CNN_STEM_CHANNELS, 3, 1)])
    channels = CNN_STEM_CHANNELS
    for c_out, stride in CNN_BLOCKS:
        x = builder.residual_block(x, channels, c_out, stride)
        channels = c_out
    x = builder.op("Flatten", [builder.op("GlobalAveragePool", [x])], axis=1)
    logits = builder.dense(x, channels, CNN_CLASSES)
    builder.op("Softmax", [logits], output="probabilities", axis=1)
    builder.op("ArgMax", [logits], output="label", axis=1, keepdims=0)

    graph = helper.make_graph(
        builder.nodes,
        name,
        inputs=[
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [BATCH_DIM, *CNN_IMAGE_SHAPE])
        ],
        outputs=[
            helper.make_tensor_value_info("label", TensorProto.INT64, [BATCH_DIM]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, [BATCH_DIM, CNN_CLASSES]
            ),
        ],
        initializer=builder.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return normalise(model, name)


# --------------------------------------------------------------------------
# Measuring with onnxruntime
# --------------------------------------------------------------------------


def open_session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """Open ``path`` on the CPU; ``threads=0`` lets onnxruntime choose."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def tensor_specs(args: Sequence[ort.NodeArg]) -> tuple[TensorSpec, ...]:
    """Describe session inputs or outputs in manifest terms."""
    specs = []
    for arg in args:
        if arg.type not in ORT_DTYPES:
            raise ValueError(f"{arg.name}: unsupported type {arg.type}")
        shape = tuple(dim if isinstance(dim, int) else -1 for dim in arg.shape)
        specs.append(TensorSpec(arg.name, ORT_DTYPES[arg.type], shape))
    return tuple(specs)


def measure_accuracy(session: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` whose ``label`` output equals ``y``."""
    (labels,) = session.run(["label"], {"X": x})
    return float(np.mean(labels == y))


def ms_per_sample(path: Path, sample: np.ndarray, repeats: int) -> float:
    """Median single-sample latency in ms on one onnxruntime thread."""
    session = open_session(path, threads=1)
    feed = {session.get_inputs()[0].name: sample}
    for _ in range(3):
        session.run(None, feed)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(timings)


def write_model(
    model: onnx.ModelProto,
    description: str,
    split: Split,
    *,
    compute_only: bool,
    sample: np.ndarray,
    repeats: int,
) -> BuiltModel:
    """Save ``model``, then read it back with onnxruntime to describe it."""
    name = model.graph.name
    path = MODELS_DIR / f"{name}.onnx"
    path.write_bytes(model.SerializeToString(deterministic=True))
    session = open_session(path)
    accuracy = None if compute_only else measure_accuracy(session, split.x_test, split.y_test)
    return BuiltModel(
        name=name,
        path=path,
        description=description,
        compute_only=compute_only,
        inputs=tensor_specs(session.get_inputs()),
        outputs=tensor_specs(session.get_outputs()),
        accuracy=accuracy,
        ms_per_sample=ms_per_sample(path, sample, repeats),
    )


# --------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _toml_str(value: str) -> str:
    # A JSON string literal is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def _toml_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def render_manifest(models: Sequence[BuiltModel], dataset: Path, samples: int) -> str:
    """Format the manifest as TOML by hand (the stdlib only reads TOML)."""
    lines = [
        "# generated by models/build.py — do not edit by hand",
        "",
        "[dataset]",
        f"file = {_toml_str(dataset.name)}",
        f"sha256 = {_toml_str(sha256_of(dataset))}",
        f"samples = {samples}",
        f"split = {_toml_str(SPLIT_DESCRIPTION)}",
    ]
    for model in models:
        key = f"models.{model.name}"
        lines += [
            "",
            f"[{key}]",
            f"version = {_toml_str(MODEL_VERSION)}",
            f"file = {_toml_str(model.path.name)}",
            f"sha256 = {_toml_str(sha256_of(model.path))}",
            f"description = {_toml_str(model.description)}",
        ]
        if model.accuracy is not None:
            lines.append(f"accuracy = {model.accuracy!r}")
        lines.append(f"compute_only = {'true' if model.compute_only else 'false'}")
        for kind, specs in (("inputs", model.inputs), ("outputs", model.outputs)):
            for spec in specs:
                lines += [
                    "",
                    f"[[{key}.{kind}]]",
                    f"name = {_toml_str(spec.name)}",
                    f"dtype = {_toml_str(spec.dtype)}",
                    f"shape = {_toml_shape(spec.shape)}",
                ]
    return "\n".join(lines) + "\n"


def print_summary(models: Sequence[BuiltModel]) -> None:
    header = f"{'model':<14} {'size':>10} {'accuracy':>9} {'ms/sample':>10}"
    print(header)
    print("-" * len(header))
    for model in models:
        size_kib = model.path.stat().st_size / 1024
        accuracy = "-" if model.accuracy is None else f"{model.accuracy:.4f}"
        print(f"{model.name:<14} {size_kib:>6.1f} KiB {accuracy:>9} {model.ms_per_sample:>10.3f}")
    print("(ms/sample: median latency of one sample, onnxruntime CPU, 1 thread)")


def main() -> int:
    split = load_split()
    dataset = MODELS_DIR / DATASET_NAME
    save_npz(dataset, {"X": split.x_test, "y": split.y_test})

    digit = split.x_test[:1]
    image = np.random.default_rng(SEED).random((1, *CNN_IMAGE_SHAPE), dtype=np.float32)
    models = [
        write_model(
            sklearn_to_onnx(train_small(split), "digits-small"),
            "8x8 handwritten digits: standard scaling + multinomial logistic regression. "
            "Small and fast; meant for edge nodes.",
            split,
            compute_only=False,
            sample=digit,
            repeats=200,
        ),
        write_model(
            sklearn_to_onnx(train_large(split), "digits-large"),
            "8x8 handwritten digits: standard scaling + MLP with hidden layers (256, 128). "
            "Larger and more accurate; meant for the cloud gateway.",
            split,
            compute_only=False,
            sample=digit,
            repeats=200,
        ),
        write_model(
            build_cnn("cnn-heavy"),
            "ResNet-style CNN over 3x64x64 images with fixed-seed random weights. "
            "Compute-only load generator: its predictions are meaningless.",
            split,
            compute_only=True,
            sample=image,
            repeats=30,
        ),
    ]
    (MODELS_DIR / MANIFEST_NAME).write_text(
        render_manifest(models, dataset, len(split.y_test)), encoding="utf-8"
    )
    print_summary(models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
