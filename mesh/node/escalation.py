"""Joint inference on the entry node: the edge answers, the unsure rows escalate.

For a model with an escalation rule (:mod:`mesh.core.policy.escalation`),
:meth:`JointInference.infer` runs the request as the node always has (here,
a peer, or the gateway: :mod:`mesh.node.routing`), asks the rule which rows
are unsure, and sends just those input rows to the rule's target model
through the same routing, bounded by the time left on the request's
deadline. The target's rows replace the edge's in the answer.

An escalation never costs a request its answer: when the target is
missing, unreachable, late or fails, the edge answer is returned as it was,
with ``escalated: false`` and the reason. What every answer of such a model
says (``Answer.escalation``; RPC ``detail`` answers and V2 response
``parameters`` carry the same flat fields):

* ``escalated``: whether any row's answer came from the target
* ``escalated_to``, ``escalation_threshold``: the target and the threshold used
* ``unsure_rows``, ``escalated_rows``, ``batch_rows``: rows below the threshold,
  rows answered by the target, rows in the request
* ``edge_ran_on``: where the edge model ran; ``escalation_ran_on``: where the target did
* ``escalation_reason`` (when not escalated): one of
  :data:`~mesh.core.policy.escalation.REASONS`; ``escalation_error``: the failure's message
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mesh.core.models.signatures import ModelSpec
from mesh.core.policy.escalation import (
    REASONS,
    Decision,
    EscalationRule,
    check_edge_outputs,
    check_target_outputs,
    decide,
    merge_rows,
    select_rows,
)
from mesh.core.wire.requests import MAX_REQUEST_ID_LENGTH, InferRequest
from mesh.errors import DeadlineExceeded, MeshError, ModelNotFound, Overloaded, TransportError
from mesh.log_once import WarnOnce
from mesh.runtime.model_files import find_model_files
from mesh.service import Answer

__all__ = ["COUNTERS", "JointInference", "manifest_rules", "rules_by_model"]

log = logging.getLogger(__name__)

# Counters status() always shows. Every request of a model with a rule that
# the edge answered ends in exactly one of escalated, kept_at_edge or
# client_gone (cancelled during the escalation), so that at every moment
# checked = escalated + kept_at_edge + client_gone + in_flight, and
# kept_at_edge = confident + opted_out + escalation_failed.
COUNTERS = (
    "checked",
    "escalated",
    "kept_at_edge",
    "confident",
    "opted_out",
    "escalation_failed",
    "client_gone",
    "checked_rows",
    "escalated_rows",
    "in_flight",
)
_FAILURES = tuple(r for r in REASONS if r not in ("confident", "opted_out"))
_SUFFIX = ":escalate"

Route = Callable[[InferRequest], Awaitable[Answer]]


def manifest_rules(dirs: Iterable[Path]) -> list[EscalationRule]:
    """The ``escalate`` rules the manifests of the model directories ``dirs`` declare."""
    return [
        cand.entry.escalate
        for cand in find_model_files(list(dirs))
        if cand.entry is not None and cand.entry.escalate is not None
    ]


def rules_by_model(
    manifest_rules: Iterable[EscalationRule],
    config_rules: Iterable[EscalationRule],
    specs: Iterable[ModelSpec],
) -> dict[str, EscalationRule]:
    """The rules in force: the manifests', each replaced by the config's for its model.

    A rule for a model served here is checked against its outputs now, and
    against its target's when that is served here too (ConfigError: the
    node does not start with a rule that cannot work); a rule for a model
    held elsewhere applies when this node is the entry of a request for it,
    and a target elsewhere is checked on each answer (``mismatch``).
    """
    rules = {rule.model: rule for rule in manifest_rules}
    rules.update({rule.model: rule for rule in config_rules})
    served = {spec.name: spec for spec in specs}
    for rule in rules.values():
        spec = served.get(rule.model)
        if spec is not None:
            check_edge_outputs(rule, spec.outputs)
            target = served.get(rule.to)
            if target is not None:
                check_target_outputs(rule, spec.outputs, target.outputs)
    return rules


class JointInference:
    """Runs each request through ``route``, and escalates its unsure rows when a rule says so."""

    def __init__(
        self, rules: Mapping[str, EscalationRule], route: Route, *, default_deadline_ms: float
    ) -> None:
        self._rules = dict(rules)
        self._route = route
        # The time an escalation may take when the request gave no deadline.
        self._default_s = default_deadline_ms / 1000
        self.counters: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self._warn = WarnOnce(log)

    @property
    def rules(self) -> Mapping[str, EscalationRule]:
        """The rules in force, by edge model."""
        return self._rules

    async def infer(self, request: InferRequest) -> Answer:
        """Answer ``request``; for a model with a rule, escalate its unsure rows."""
        arrived = time.monotonic()
        answer = await self._route(request)
        rule = self._rules.get(request.model)
        if rule is None:
            return answer
        self.counters["in_flight"] += 1
        try:
            return await self._second_stage(rule, request, answer, arrived)
        except asyncio.CancelledError:
            self.counters["client_gone"] += 1
            raise
        finally:
            self.counters["in_flight"] -= 1

    async def _second_stage(
        self, rule: EscalationRule, request: InferRequest, edge: Answer, arrived: float
    ) -> Answer:
        counters = self.counters
        counters["checked"] += 1
        try:
            decision = decide(rule, request.escalation, edge.outputs)
        except ValueError as exc:
            return self._kept(rule, edge, Decision((), rule.threshold), "mismatch", str(exc))
        counters["checked_rows"] += _rows(rule, edge)
        if not decision.escalate:
            return self._kept(rule, edge, decision, decision.reason)
        budget_s = (
            self._default_s if request.deadline_ms is None else request.deadline_ms / 1000
        ) - (time.monotonic() - arrived)
        if budget_s <= 0:
            return self._kept(rule, edge, decision, "late", "no time left on the deadline")
        try:
            inputs = select_rows(request.inputs, decision.rows, _rows(rule, edge))
        except ValueError as exc:
            return self._kept(rule, edge, decision, "mismatch", str(exc))
        second = InferRequest(
            model=rule.to,
            inputs=inputs,
            request_id=_second_id(request.request_id),
            deadline_ms=budget_s * 1000,
            version=rule.version,
        )
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget_s):
                target = await self._route(second)
            outputs = merge_rows(rule, edge.outputs, target.outputs, decision.rows)
        except TimeoutError:
            return self._kept(rule, edge, decision, "late", f"no answer within {budget_s:.3f} s")
        except ValueError as exc:
            return self._kept(rule, edge, decision, "mismatch", str(exc))
        except MeshError as exc:
            # Routing names a gateway that ran out of time Overloaded; a
            # failure that came as the time ran out is lateness all the same.
            spent = time.monotonic() - started >= 0.95 * budget_s
            return self._kept(rule, edge, decision, "late" if spent else _reason(exc), exc.message)
        counters["escalated"] += 1
        counters["escalated_rows"] += len(decision.rows)
        fields = _fields(rule, edge, decision, escalated=True)
        fields["escalation_ran_on"] = target.ran_on
        return Answer(outputs, edge.ran_on, fields)

    def _kept(
        self,
        rule: EscalationRule,
        edge: Answer,
        decision: Decision,
        reason: str,
        error: str = "",
    ) -> Answer:
        """The edge answer as it was, saying why it was not escalated."""
        self.counters["kept_at_edge"] += 1
        if reason in _FAILURES:
            self.counters["escalation_failed"] += 1
            self.failures[reason] += 1
            self._warn(
                f"{rule.model}:{reason}",
                "escalating '%s' to '%s' failed (%s): %s; answering with the edge model's rows",
                rule.model,
                rule.to,
                reason,
                error,
            )
        else:
            self.counters[reason] += 1
        fields = _fields(rule, edge, decision, escalated=False)
        fields["escalation_reason"] = reason
        if error:
            fields["escalation_error"] = error
        return replace(edge, escalation=fields)

    def status(self) -> dict[str, Any]:
        """The rules and counters for ``status()`` (flat, ready to export as metrics)."""
        return {
            "rules": {
                name: {
                    "to": r.to,
                    "threshold": r.threshold,
                    "output": r.output,
                    **({} if r.version is None else {"version": r.version}),
                }
                for name, r in sorted(self._rules.items())
            },
            **{name: self.counters.get(name, 0) for name in COUNTERS},
            "failed_by_reason": {reason: self.failures.get(reason, 0) for reason in _FAILURES},
        }


def _fields(
    rule: EscalationRule, edge: Answer, decision: Decision, *, escalated: bool
) -> dict[str, Any]:
    return {
        "escalated": escalated,
        "escalated_to": rule.to,
        "escalation_threshold": decision.threshold,
        "unsure_rows": len(decision.rows),
        "escalated_rows": len(decision.rows) if escalated else 0,
        "batch_rows": _rows(rule, edge),
        "edge_ran_on": edge.ran_on,
    }


def _rows(rule: EscalationRule, answer: Answer) -> int:
    """The answer's batch: the rows of the rule's output (else of any output)."""
    probabilities = answer.outputs.get(rule.output)
    for array in (probabilities, *answer.outputs.values()):
        if array is not None:
            return int(array.shape[0]) if array.ndim else 1
    return 0


def _reason(exc: MeshError) -> str:
    if isinstance(exc, ModelNotFound):
        return "no_target"
    if isinstance(exc, (Overloaded, TransportError)):
        return "unreachable"
    if isinstance(exc, DeadlineExceeded):
        return "late"
    return "failed"


def _second_id(request_id: str | None) -> str | None:
    """The escalated request's id: the client's, marked (so a story reads as one)."""
    if request_id is None:
        return None
    return request_id[: MAX_REQUEST_ID_LENGTH - len(_SUFFIX)] + _SUFFIX
