"""``infer`` parameters: what is accepted and what each mistake is told."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mesh.core.wire.requests import parse_infer
from mesh.core.wire.tensors import encode_tensors
from mesh.errors import BadRequest, InvalidInput

INPUTS = encode_tensors({"X": np.zeros((1, 64), dtype=np.float32)})


def test_two_and_three_parameter_forms() -> None:
    plain = parse_infer(["digits-small", INPUTS])
    assert plain.model == "digits-small"
    assert plain.inputs["X"].shape == (1, 64)
    assert plain.request_id is None
    assert plain.deadline_ms is None
    full = parse_infer(["digits-small", INPUTS, {"request_id": "r-1", "deadline_ms": 250}])
    assert full.request_id == "r-1"
    assert full.deadline_ms == 250.0


@pytest.mark.parametrize(
    ("params", "error", "fragment"),
    [
        ([], BadRequest, "got 0 params"),
        (["m"], BadRequest, "got 1 params"),
        (["m", INPUTS, {}, {}], BadRequest, "got 4 params"),
        ([7, INPUTS], BadRequest, "model must be a non-empty string"),
        (["", INPUTS], BadRequest, "model must be a non-empty string"),
        (["m", [1, 2]], InvalidInput, "expected a map"),
        (["m", {"X": "tensor"}], InvalidInput, "expected a tensor map"),
        (["m", INPUTS, []], BadRequest, "options must be a map"),
        (["m", INPUTS, {"priority": 1}], BadRequest, "unknown options ['priority']"),
        (["m", INPUTS, {"request_id": 5}], BadRequest, "request_id"),
        (["m", INPUTS, {"request_id": "x" * 129}], BadRequest, "request_id"),
        (["m", INPUTS, {"deadline_ms": 0}], BadRequest, "deadline_ms"),
        (["m", INPUTS, {"deadline_ms": -5}], BadRequest, "deadline_ms"),
        (["m", INPUTS, {"deadline_ms": float("nan")}], BadRequest, "deadline_ms"),
        (["m", INPUTS, {"deadline_ms": True}], BadRequest, "deadline_ms"),
        (["m", INPUTS, {"deadline_ms": "100"}], BadRequest, "deadline_ms"),
    ],
)
def test_mistakes_are_named(params: list[Any], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error) as caught:
        parse_infer(params)
    assert fragment in str(caught.value)
