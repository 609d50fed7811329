"""Tiny ONNX models that tell their versions apart: each answers a constant.

``write_constant_model(path, value)`` writes a model with input ``X``
(float32, [-1, 2]) and output ``Y`` = ``value`` for every element, so an
answer says which version ran. Built with ``onnx`` (a test dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["INPUT", "OUTPUT", "constant_model_bytes", "write_constant_model"]

INPUT = "X"
OUTPUT = "Y"


def constant_model_bytes(value: float) -> bytes:
    """The serialized model answering ``value`` everywhere."""
    zero = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero")
    const = numpy_helper.from_array(np.array([value], dtype=np.float32), "const")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", [INPUT, "zero"], ["zeroed"]),
            helper.make_node("Add", ["zeroed", "const"], [OUTPUT]),
        ],
        f"constant-{value}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [None, 2])],
        initializer=[zero, const],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def write_constant_model(path: Path, value: float) -> Path:
    """Write the model answering ``value`` to ``path`` (atomically: a watcher never
    sees half a file) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_bytes(constant_model_bytes(value))
    staged.replace(path)
    return path
