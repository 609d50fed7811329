"""Joint inference: when an edge model's answer is escalated to a bigger model.

A model may declare an :class:`EscalationRule` (its manifest's ``escalate``
key, or the node's ``escalate`` setting): the name of one of its outputs that
holds class probabilities (a ``[batch, classes]`` float matrix), a
threshold, and the model to escalate to. The edge model answers first; each
row whose top probability is below the threshold is *unsure*, and only those
rows (the same input rows) go to the target model. The target's rows then
replace the edge's rows in every output both models have alike.

Pure: the node (:mod:`mesh.node.escalation`) runs the two stages and asks this
module what to do between them. Everything here takes arrays and specs and
returns arrays or a decision; nothing waits or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.core.models.signatures import TensorSpec, check_model_name
from mesh.core.models.versions import check_version
from mesh.errors import BadRequest, ConfigError

__all__ = [
    "DEFAULT_OUTPUT",
    "NO_OVERRIDE",
    "REASONS",
    "Decision",
    "EscalationRule",
    "Override",
    "check_edge_outputs",
    "check_target_outputs",
    "decide",
    "merge_rows",
    "mergeable_outputs",
    "parse_override",
    "parse_rule",
    "parse_rule_text",
    "select_rows",
    "unsure_rows",
]

# The output a rule reads when it names none: what the bundled models call it.
DEFAULT_OUTPUT = "probabilities"

# Why an answer was not escalated, as answers and counters name it. The first
# two are normal outcomes; the others are an escalation that was tried and
# failed, after which the edge answer is returned as it was.
REASONS = (
    "confident",  # every row's top probability reached the threshold
    "opted_out",  # the request said escalate: false
    "no_target",  # nothing in the mesh nor the gateway serves the target model
    "unreachable",  # the target's holders or the gateway could not take it
    "late",  # the target did not answer within the request's time left
    "failed",  # the target answered with an error
    "mismatch",  # the target's outputs cannot replace the edge's rows
)

_RULE_KEYS = frozenset({"to", "threshold", "output", "version"})


@dataclass(frozen=True, slots=True)
class EscalationRule:
    """Escalate ``model``'s unsure rows to ``to``.

    A row is unsure when its largest value in output ``output`` is below
    ``threshold``. A threshold of 0 escalates nothing; one above 1 escalates
    every row. ``version`` pins the target's version (its label); None sends
    the unsure rows to the newest version the routing finds, as any request.
    """

    model: str
    to: str
    threshold: float
    output: str = DEFAULT_OUTPUT
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Override:
    """What one request asks of escalation; None leaves the rule's choice."""

    escalate: bool | None = None
    threshold: float | None = None


NO_OVERRIDE = Override()


@dataclass(frozen=True, slots=True)
class Decision:
    """Which rows of an edge answer go to the target, and at what threshold.

    ``rows`` is empty when nothing escalates; ``reason`` then says why
    (``"confident"`` or ``"opted_out"``).
    """

    rows: tuple[int, ...]
    threshold: float
    reason: str = ""

    @property
    def escalate(self) -> bool:
        """Whether any row goes to the target."""
        return bool(self.rows)


# --- parsing ------------------------------------------------------------------


def _threshold(value: object, where: str, key: str = "threshold") -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(
            f"{where}: {key} must be a number >= 0 (0 escalates nothing, above 1"
            f" escalates every row), got {value!r}"
        )
    return float(value)


def parse_rule(model: str, table: object, where: str) -> EscalationRule:
    """An :class:`EscalationRule` from a table ``{to, threshold[, output][, version]}``.

    ConfigError names ``where`` and what was expected.
    """
    example = '{ to = "digits-large", threshold = 0.8, output = "probabilities" }'
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table like {example}, got {table!r}")
    unknown = sorted(set(map(str, table)) - _RULE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}; allowed: 'to', 'threshold', 'output', 'version'"
        )
    for key in ("to", "threshold"):
        if key not in table:
            raise ConfigError(f"{where}: missing key '{key}' (e.g. {example})")
    to = _name(table["to"], f"{where}: key 'to'")
    if to == model:
        raise ConfigError(f"{where}: model '{model}' cannot escalate to itself")
    output = table.get("output", DEFAULT_OUTPUT)
    if not isinstance(output, str) or not output:
        raise ConfigError(f"{where}: key 'output' must be an output's name, got {output!r}")
    version = table.get("version")
    return EscalationRule(
        model=model,
        to=to,
        threshold=_threshold(table["threshold"], where),
        output=output,
        version=None if version is None else check_version(version, f"{where}: key 'version'"),
    )


def parse_rule_text(text: str, where: str) -> EscalationRule:
    """A rule from ``MODEL=TARGET@THRESHOLD[:OUTPUT]`` (a flag or environment value)."""
    form = "MODEL=TARGET@THRESHOLD[:OUTPUT], like digits-small=digits-large@0.8"
    model, eq, rest = text.strip().partition("=")
    target, at, tail = rest.partition("@")
    threshold, colon, output = tail.partition(":")
    if not (eq and at and model and target and threshold) or (colon and not output):
        raise ConfigError(f"{where}: expected {form}; got {text!r}")
    try:
        number = float(threshold)
    except ValueError:
        raise ConfigError(f"{where}: threshold {threshold!r} is not a number ({form})") from None
    table: dict[str, Any] = {"to": target.strip(), "threshold": number}
    if colon:
        table["output"] = output.strip()
    return parse_rule(_name(model.strip(), where), table, where)


def _name(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a model name, got {value!r}")
    try:
        check_model_name(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}") from None
    return value


def parse_override(escalate: object, threshold: object, where: str) -> Override:
    """A request's ``escalate`` (true/false) and ``escalate_threshold``; BadRequest if malformed."""
    if escalate is not None and not isinstance(escalate, bool):
        raise BadRequest(f"{where}: escalate must be true or false, got {escalate!r}")
    if threshold is not None:
        try:
            threshold = _threshold(threshold, where, "escalate_threshold")
        except ConfigError as exc:
            raise BadRequest(exc.message) from None
    if escalate is None and threshold is None:
        return NO_OVERRIDE
    return Override(escalate=escalate, threshold=threshold)


# --- checking a rule against the models ---------------------------------------


def check_edge_outputs(rule: EscalationRule, outputs: Sequence[TensorSpec]) -> None:
    """ConfigError unless the edge model's output ``rule.output`` is a probability matrix."""
    by_name = {t.name: t for t in outputs}
    spec = by_name.get(rule.output)
    where = f"escalation rule of '{rule.model}'"
    if spec is None:
        raise ConfigError(
            f"{where}: the model has no output '{rule.output}'; its outputs are"
            f" {sorted(by_name)} (set output = the one holding class probabilities)"
        )
    if spec.dtype.kind != "f" or len(spec.shape) != 2:
        raise ConfigError(
            f"{where}: output '{rule.output}' is {_spec_text(spec)}; a rule"
            " needs a float matrix [batch, classes] of class probabilities"
        )


def check_target_outputs(
    rule: EscalationRule, edge: Sequence[TensorSpec], target: Sequence[TensorSpec]
) -> None:
    """ConfigError unless the target has the rule's output as the edge has it (dtype, classes)."""
    mine = {t.name: t for t in edge}[rule.output]
    theirs = {t.name: t for t in target}.get(rule.output)
    if theirs is None or theirs.dtype != mine.dtype or theirs.shape[1:] != mine.shape[1:]:
        got = "none" if theirs is None else _spec_text(theirs)
        raise ConfigError(
            f"escalation rule of '{rule.model}': '{rule.to}' cannot replace its rows: the"
            f" edge's output '{rule.output}' is {_spec_text(mine)}, the"
            f" target's is {got}"
        )


def _spec_text(spec: TensorSpec) -> str:
    """``float32[-1, 10]``: a tensor's dtype and shape as the manifest writes them."""
    return f"{spec.dtype.name}{[-1 if d is None else d for d in spec.shape]}"


def mergeable_outputs(
    edge: Mapping[str, np.ndarray[Any, Any]],
    target: Mapping[str, np.ndarray[Any, Any]],
    rows: int,
    batch: int,
) -> tuple[str, ...]:
    """The outputs whose target rows can replace the edge's: same name, dtype and row shape.

    ``rows`` is how many rows the target was sent and ``batch`` how many the
    edge answered; an output not batched that way on either side is left out.
    """
    names = []
    for name, mine in edge.items():
        theirs = target.get(name)
        if (
            theirs is not None
            and theirs.dtype == mine.dtype
            and theirs.ndim == mine.ndim >= 1
            and mine.shape[0] == batch
            and theirs.shape[0] == rows
            and theirs.shape[1:] == mine.shape[1:]
        ):
            names.append(name)
    return tuple(sorted(names))


# --- deciding and merging -------------------------------------------------------


def decide(
    rule: EscalationRule,
    override: Override,
    outputs: Mapping[str, np.ndarray[Any, Any]],
) -> Decision:
    """Which rows of the edge ``outputs`` escalate under ``rule`` and the request's ``override``.

    ValueError when ``outputs`` lacks the rule's output or it is not a
    matrix (the node checks that at start; a model swapped since is caught here).
    """
    threshold = rule.threshold if override.threshold is None else override.threshold
    if override.escalate is False:
        return Decision((), threshold, "opted_out")
    probabilities = outputs.get(rule.output)
    if probabilities is None or probabilities.ndim != 2:
        raise ValueError(
            f"output '{rule.output}' of '{rule.model}' is not a [batch, classes] matrix"
        )
    rows = unsure_rows(probabilities, threshold)
    return Decision(rows, threshold, "" if rows else "confident")


def unsure_rows(probabilities: np.ndarray[Any, Any], threshold: float) -> tuple[int, ...]:
    """Indexes of the rows whose largest value is below ``threshold`` (NaN rows count as unsure)."""
    if probabilities.shape[0] == 0:
        return ()
    if probabilities.shape[1] == 0:
        return tuple(range(probabilities.shape[0]))
    top = probabilities.max(axis=1)
    # `not top >= threshold` rather than `top < threshold`: a NaN row is unsure.
    return tuple(int(i) for i in np.flatnonzero(~(top >= threshold)))


def select_rows(
    inputs: Mapping[str, np.ndarray[Any, Any]], rows: Sequence[int], batch: int
) -> dict[str, np.ndarray[Any, Any]]:
    """The inputs of the rows that escalate; ``batch`` is the edge answer's row count.

    ValueError when an input's first axis is not that batch: its rows
    cannot be told apart, so nothing can be escalated row by row.
    """
    for name, array in inputs.items():
        if array.ndim == 0 or array.shape[0] != batch:
            raise ValueError(
                f"input '{name}' has shape {list(array.shape)}, not {batch} rows as the"
                " edge answer has; only batched inputs can be escalated row by row"
            )
    index = np.asarray(rows, dtype=np.intp)
    return {name: np.ascontiguousarray(array[index]) for name, array in inputs.items()}


def merge_rows(
    rule: EscalationRule,
    edge: Mapping[str, np.ndarray[Any, Any]],
    target: Mapping[str, np.ndarray[Any, Any]],
    rows: Sequence[int],
) -> dict[str, np.ndarray[Any, Any]]:
    """The edge outputs with ``rows`` replaced by the target's, in every mergeable output.

    Outputs only the edge model has (or has in another dtype or row shape)
    keep the edge's values. ValueError when the rule's own output cannot be
    merged; the caller then keeps the edge answer whole.
    """
    names = mergeable_outputs(edge, target, len(rows), edge[rule.output].shape[0])
    if rule.output not in names:
        raise ValueError(
            f"'{rule.to}' answered outputs {sorted(target)}, without an output"
            f" '{rule.output}' of the edge's dtype and row shape to replace the edge's rows"
        )
    index = np.asarray(rows, dtype=np.intp)
    merged = dict(edge)
    for name in names:
        column = edge[name].copy()
        column[index] = target[name]
        merged[name] = column
    return merged
