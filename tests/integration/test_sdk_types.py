"""The SDK's result types read a model's wire form through the core's one parser."""

from __future__ import annotations

import numpy as np
import pytest

from mesh import ModelInfo
from mesh.core.models.signatures import ModelSpec, TensorSpec
from mesh.errors import ProtocolError

SPEC = ModelSpec(
    name="digits-small",
    version="1",
    sha256="ab" * 32,
    inputs=(TensorSpec("X", np.dtype(np.float32), (None, 64)),),
    outputs=(TensorSpec("label", np.dtype(np.int64), (None,)),),
    accuracy=0.97,
)


def test_the_sdk_reads_the_same_wire_form() -> None:
    info = ModelInfo.from_wire(SPEC.to_wire())
    assert (info.name, info.sha256, info.accuracy) == (SPEC.name, SPEC.sha256, SPEC.accuracy)
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [("X", "float32", (-1, 64))]
    assert [(t.name, t.dtype, t.shape) for t in info.outputs] == [("label", "int64", (-1,))]


def test_the_sdk_refuses_what_the_core_refuses() -> None:
    with pytest.raises(ProtocolError, match=r"malformed model entry.*'sha256'"):
        ModelInfo.from_wire({**SPEC.to_wire(), "sha256": "nope"})
