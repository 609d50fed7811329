"""The demo's second act: joint inference, the edge and the cloud on one answer.

The entry device runs ``digits-small`` with an escalation rule
(``--escalate digits-small=digits-large@0.8``) and the gateway also holds
``digits-large``. The act sends every held-out digit three times, each time
as one batched request to the entry device: with ``escalate: false`` (the
edge alone), as is (joint: the rows the edge is unsure of go to the cloud
model, decided per row), and for ``digits-large`` itself (the cloud alone,
which the node hands to the gateway). Batches keep the act to a fraction of
a second; the answers' own fields say how many rows escalated and where
each stage ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh.errors import MeshError
from mesh.sdk.client import MeshClient

__all__ = ["CLOUD_MODEL", "THRESHOLD", "JointAct", "node_flags", "print_act", "run_act"]

EDGE_MODEL = "digits-small"
CLOUD_MODEL = "digits-large"
# At 0.8 the bundled digits-small sends about 7 % of the held-out digits
# to the cloud and the pair matches digits-large alone (benchmarks/escalation.py).
THRESHOLD = 0.8


def node_flags() -> list[str]:
    """The entry device's flags for the act: its escalation rule."""
    return ["--escalate", f"{EDGE_MODEL}={CLOUD_MODEL}@{THRESHOLD:g}"]


@dataclass
class JointAct:
    """What the act got back (labels by path); ``error`` says what failed instead, if anything."""

    labels: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    escalated_rows: int = 0
    rows: int = 0
    edge_ran_on: str = ""
    cloud_ran_on: str = ""
    reason: str = ""
    error: str = ""


async def run_act(address: str, key: bytes, pixels: np.ndarray[Any, Any]) -> JointAct:
    """Edge only, joint and cloud only, each one batched request to the entry device."""
    act = JointAct(rows=len(pixels))
    inputs = {"X": pixels}
    try:
        async with MeshClient(address, mesh_key=key) as client:
            edge = await client.infer(EDGE_MODEL, inputs, escalate=False)
            joint = await client.infer(EDGE_MODEL, inputs)
            cloud = await client.infer(CLOUD_MODEL, inputs)
    except MeshError as exc:
        act.error = f"{exc.code}: {exc.message}"
        return act
    act.labels = {"edge only": edge["label"], "cloud only": cloud["label"], "joint": joint["label"]}
    fields = joint.escalation or {}
    act.escalated_rows = int(fields.get("escalated_rows", 0))
    act.edge_ran_on = str(fields.get("edge_ran_on", joint.ran_on))
    act.cloud_ran_on = str(fields.get("escalation_ran_on", ""))
    act.reason = str(fields.get("escalation_reason", ""))
    return act


def print_act(act: JointAct, truth: np.ndarray[Any, Any]) -> None:
    """The act's lines: the three accuracies against ``truth`` and the share escalated."""
    print()
    print(f"  joint inference: {EDGE_MODEL} at the edge, {CLOUD_MODEL} in the cloud,")
    print(f"  rows below {THRESHOLD:g} top probability escalate (one batch of {act.rows} digits)")
    if act.error:
        print(f"  the act failed: {act.error}")
        return
    share = act.escalated_rows / act.rows if act.rows else 0.0
    where = f"ran on {act.edge_ran_on}, escalated rows on {act.cloud_ran_on or 'nothing'}"
    if act.reason:
        where += f" (not escalated: {act.reason})"
    for name, labels in act.labels.items():
        accuracy = float(np.mean(labels == truth))
        print(f"  {name:<10} accuracy {accuracy:.4f}{', ' + where if name == 'joint' else ''}")
    print(f"  {'escalated':<10} {act.escalated_rows} of {act.rows} digits ({share:.1%})")
