"""The joint-inference rule (mesh.core.policy.escalation): parsing, deciding, merging."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mesh.core.models.manifest import parse_manifest
from mesh.core.models.signatures import TensorSpec
from mesh.core.policy.escalation import (
    NO_OVERRIDE,
    EscalationRule,
    Override,
    check_edge_outputs,
    check_target_outputs,
    decide,
    merge_rows,
    parse_override,
    parse_rule,
    parse_rule_text,
    select_rows,
    unsure_rows,
)
from mesh.errors import BadRequest, ConfigError

RULE = EscalationRule(model="small", to="large", threshold=0.8)
PROBS = np.array(
    [
        [0.9, 0.1],  # sure
        [0.6, 0.4],  # unsure
        [0.8, 0.2],  # exactly at the threshold: sure
        [0.5, 0.5],  # unsure
    ],
    dtype=np.float32,
)


@pytest.mark.parametrize(
    ("threshold", "rows"),
    [
        (0.0, ()),
        (0.5, ()),
        (0.6, (3,)),
        (0.8, (1, 3)),
        (0.85, (1, 2, 3)),
        (1.0, (0, 1, 2, 3)),
        (1.01, (0, 1, 2, 3)),
    ],
)
def test_rows_below_the_threshold_are_unsure(threshold: float, rows: tuple[int, ...]) -> None:
    assert unsure_rows(PROBS, threshold) == rows


def test_a_nan_row_is_unsure_and_an_empty_batch_has_none() -> None:
    probs = np.array([[np.nan, np.nan], [1.0, 0.0]], dtype=np.float32)
    assert unsure_rows(probs, 0.5) == (0,)
    assert unsure_rows(np.zeros((0, 10), dtype=np.float32), 0.5) == ()


@pytest.mark.parametrize(
    ("override", "rows", "threshold", "reason"),
    [
        (NO_OVERRIDE, (1, 3), 0.8, ""),
        (Override(escalate=False), (), 0.8, "opted_out"),
        (Override(escalate=False, threshold=1.01), (), 1.01, "opted_out"),
        (Override(escalate=True), (1, 3), 0.8, ""),
        (Override(threshold=0.0), (), 0.0, "confident"),
        (Override(threshold=1.01), (0, 1, 2, 3), 1.01, ""),
    ],
)
def test_a_request_overrides_the_rule(
    override: Override, rows: tuple[int, ...], threshold: float, reason: str
) -> None:
    decision = decide(RULE, override, {"probabilities": PROBS})
    assert (decision.rows, decision.threshold, decision.reason) == (rows, threshold, reason)
    assert decision.escalate is bool(rows)


def test_deciding_without_the_rules_output_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        decide(RULE, NO_OVERRIDE, {"label": np.zeros(4, dtype=np.int64)})


def test_select_and_merge_replace_exactly_the_escalated_rows() -> None:
    inputs = {"X": np.arange(8, dtype=np.float32).reshape(4, 2)}
    picked = select_rows(inputs, (1, 3), 4)
    np.testing.assert_array_equal(picked["X"], [[2, 3], [6, 7]])
    edge: dict[str, np.ndarray[Any, Any]] = {
        "probabilities": PROBS,
        "label": np.array([0, 0, 0, 0], dtype=np.int64),
        "only_edge": np.array([5, 5, 5, 5], dtype=np.int32),
    }
    target: dict[str, np.ndarray[Any, Any]] = {
        "probabilities": np.array([[0.0, 1.0], [0.1, 0.9]], dtype=np.float32),
        "label": np.array([1, 1], dtype=np.int64),
        "only_target": np.array([7, 7], dtype=np.int32),
    }
    merged = merge_rows(RULE, edge, target, (1, 3))
    np.testing.assert_array_equal(merged["label"], [0, 1, 0, 1])
    np.testing.assert_array_equal(merged["probabilities"][[1, 3]], target["probabilities"])
    np.testing.assert_array_equal(merged["probabilities"][[0, 2]], PROBS[[0, 2]])
    # Only outputs both models have are merged; the edge's own stay as they were.
    np.testing.assert_array_equal(merged["only_edge"], edge["only_edge"])
    assert "only_target" not in merged
    # The edge's arrays are not written to.
    np.testing.assert_array_equal(edge["label"], [0, 0, 0, 0])


def test_inputs_or_outputs_not_batched_like_the_answer_are_not_merged_row_by_row() -> None:
    with pytest.raises(ValueError, match="input 'scale' has shape \\[1\\], not 4 rows"):
        select_rows({"X": np.zeros((4, 2)), "scale": np.ones(1)}, (1,), 4)
    edge = {"probabilities": PROBS, "total": np.array([4.0])}  # one value for the batch
    target = {"probabilities": PROBS[:2], "total": np.array([2.0, 2.0])}
    merged = merge_rows(RULE, edge, target, (1, 3))
    np.testing.assert_array_equal(merged["total"], [4.0])  # left as the edge said it


@pytest.mark.parametrize(
    "target",
    [
        {"label": np.array([1, 1], dtype=np.int64)},  # no probabilities
        {"probabilities": np.zeros((2, 3), dtype=np.float32)},  # other classes
        {"probabilities": np.zeros((2, 2), dtype=np.float64)},  # other dtype
        {"probabilities": np.zeros((3, 2), dtype=np.float32)},  # other row count
    ],
)
def test_a_target_whose_rule_output_cannot_replace_the_rows_is_refused(
    target: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="probabilities"):
        merge_rows(RULE, {"probabilities": PROBS}, target, (1, 3))


def test_a_rule_is_parsed_with_a_default_output() -> None:
    rule = parse_rule("small", {"to": "large", "threshold": 0.9}, "here")
    assert rule == EscalationRule("small", "large", 0.9, "probabilities")
    pinned = parse_rule("small", {"to": "large", "threshold": 0.9, "version": "2"}, "here")
    assert pinned.version == "2"
    assert parse_rule_text("small=large@0.7:scores", "--escalate") == EscalationRule(
        "small", "large", 0.7, "scores"
    )
    assert parse_rule_text(" small=large@1 ", "x").threshold == 1.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("large", "expected a table"),
        ({"threshold": 0.9}, "missing key 'to'"),
        ({"to": "large"}, "missing key 'threshold'"),
        ({"to": "large", "threshold": -0.1}, "threshold must be a number >= 0"),
        ({"to": "large", "threshold": True}, "threshold must be a number >= 0"),
        ({"to": "large", "threshold": float("nan")}, "threshold must be a number >= 0"),
        ({"to": "large", "threshold": 0.9, "treshold": 1}, "unknown key"),
        ({"to": "small", "threshold": 0.9}, "cannot escalate to itself"),
        ({"to": "bad name!", "threshold": 0.9}, "invalid model name"),
        ({"to": "large", "threshold": 0.9, "output": ""}, "key 'output'"),
        ({"to": "large", "threshold": 0.9, "version": 2}, "key 'version'.*is not a version"),
        ({"to": "large", "threshold": 0.9, "version": "../1"}, "is not a version"),
    ],
)
def test_a_bad_rule_is_a_config_error_saying_what_is_wrong(table: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rule("small", table, "here")


@pytest.mark.parametrize(
    "text", ["small", "small=large", "small=large@", "small=large@x", "=large@1", "s=l@1:"]
)
def test_bad_rule_text_names_the_form(text: str) -> None:
    with pytest.raises(ConfigError, match=r"MODEL=TARGET@THRESHOLD|not a number"):
        parse_rule_text(text, "--escalate")


def test_request_options_are_checked() -> None:
    assert parse_override(None, None, "infer") is NO_OVERRIDE
    assert parse_override(False, 0.5, "infer") == Override(False, 0.5)
    with pytest.raises(BadRequest, match="escalate must be true or false"):
        parse_override("no", None, "infer")
    with pytest.raises(BadRequest, match="escalate_threshold must be a number >= 0"):
        parse_override(None, -1, "infer")


def test_the_edge_output_must_be_a_probability_matrix() -> None:
    probabilities = TensorSpec("probabilities", np.dtype(np.float32), (None, 10))
    label = TensorSpec("label", np.dtype(np.int64), (None,))
    check_edge_outputs(RULE, (label, probabilities))
    with pytest.raises(ConfigError, match="has no output 'probabilities'"):
        check_edge_outputs(RULE, (label,))
    with pytest.raises(ConfigError, match="float matrix"):
        check_edge_outputs(EscalationRule("small", "large", 0.8, "label"), (label,))


def test_a_target_held_here_must_have_the_rules_output_alike() -> None:
    edge = (TensorSpec("probabilities", np.dtype(np.float32), (None, 10)),)
    check_target_outputs(RULE, edge, edge)
    for target, got in (
        ((), "none"),
        ((TensorSpec("probabilities", np.dtype(np.float32), (None, 3)),), r"float32\[-1, 3\]"),
        ((TensorSpec("probabilities", np.dtype(np.float64), (None, 10)),), "float64"),
    ):
        with pytest.raises(ConfigError, match=rf"'large' cannot replace.*target's is {got}"):
            check_target_outputs(RULE, edge, target)


def test_a_manifest_declares_a_rule() -> None:
    sha = "0" * 64
    entry = {"version": "1", "file": "small.onnx", "sha256": sha}
    rule = {"to": "large", "threshold": 0.8}
    entries = parse_manifest({"models": {"small": {**entry, "escalate": rule}}})
    assert entries["small"].escalate == EscalationRule("small", "large", 0.8)
    assert parse_manifest({"models": {"small": entry}})["small"].escalate is None
    with pytest.raises(ConfigError, match="manifest model 'small', key 'escalate'"):
        parse_manifest({"models": {"small": {**entry, "escalate": {"to": "large"}}}})
