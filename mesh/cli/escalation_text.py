"""Joint inference's figures as ``edgemesh infer`` and ``edgemesh status`` print them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["escalation_line", "escalation_rows"]


def escalation_rows(escalation: Mapping[str, Any]) -> list[list[object]]:
    """Joint inference's rules and counters; none when no model has a rule."""
    rules = escalation.get("rules") or {}
    if not rules:
        return []
    said = [f"{model} -> {r.get('to')} below {r.get('threshold')}" for model, r in rules.items()]
    failed = escalation.get("failed_by_reason") or {}
    return [
        ["escalation.rules", "; ".join(said)],
        *[
            [f"escalation.{k}", v]
            for k, v in escalation.items()
            if k not in ("rules", "failed_by_reason")
        ],
        [
            "escalation.failed_by_reason",
            ", ".join(f"{k} {v}" for k, v in failed.items() if v) or "none",
        ],
    ]


def escalation_line(fields: Mapping[str, Any]) -> str:
    """What joint inference did, in one line."""
    if fields.get("escalated"):
        return (
            f"{fields.get('escalated_rows')} of {fields.get('batch_rows')} rows answered by "
            f"{fields.get('escalated_to')} on {fields.get('escalation_ran_on')}"
        )
    error = fields.get("escalation_error")
    reason = f"{fields.get('escalation_reason')}" + (f": {error}" if error else "")
    return f"none ({reason})"
