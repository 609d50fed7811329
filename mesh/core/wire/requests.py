"""The ``infer`` call's parameters, checked.

``infer(model, inputs)`` or ``infer(model, inputs, options)``: ``inputs`` is a
map of input name to tensor map, ``options`` a map with optional
``request_id`` (a string the caller picks, so that retries can be recognised),
``deadline_ms`` (how long, from arrival, the caller is willing to wait) and
``detail`` (true: answer ``{"outputs": ..., "ran_on": node name}``), and for a
model with an escalation rule ``escalate`` (false: the edge answer only) and
``escalate_threshold`` (this request's own threshold; see
:mod:`mesh.core.policy.escalation`), and ``version`` (the model version to
run, by label; else the newest: see :mod:`mesh.core.models.versions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mesh.core.models.versions import check_version
from mesh.core.policy.escalation import NO_OVERRIDE, Override, parse_override
from mesh.core.wire.tensors import decode_tensors
from mesh.errors import BadRequest, ConfigError

__all__ = ["MAX_REQUEST_ID_LENGTH", "InferRequest", "parse_infer"]

MAX_REQUEST_ID_LENGTH = 128
_OPTIONS = frozenset(
    {"request_id", "deadline_ms", "detail", "escalate", "escalate_threshold", "version"}
)


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One checked ``infer`` call."""

    model: str
    inputs: dict[str, np.ndarray[Any, Any]]
    request_id: str | None = None
    deadline_ms: float | None = None
    # Answer {"outputs": ..., "ran_on": node} instead of the outputs alone.
    detail: bool = False
    # Joint inference: opt out, or another threshold (NO_OVERRIDE: the rule's).
    escalation: Override = NO_OVERRIDE
    # The model version asked for (its label); None: the newest.
    version: str | None = None


def parse_infer(params: list[Any]) -> InferRequest:
    """Check ``infer``'s parameters; BadRequest or InvalidInput says what is wrong."""
    if len(params) not in (2, 3):
        raise BadRequest(
            f"infer takes (model, inputs) or (model, inputs, options); got {len(params)} params"
        )
    model = params[0]
    if not isinstance(model, str) or not model:
        raise BadRequest(f"infer: model must be a non-empty string, got {model!r}")
    inputs = decode_tensors(params[1])
    options = params[2] if len(params) == 3 else {}
    if not isinstance(options, dict):
        raise BadRequest(f"infer: options must be a map, got {type(options).__name__}")
    unknown = set(options) - _OPTIONS
    if unknown:
        raise BadRequest(
            f"infer: unknown options {sorted(map(str, unknown))}; known: {sorted(_OPTIONS)}"
        )
    request_id = options.get("request_id")
    if request_id is not None and (
        not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_LENGTH
    ):
        raise BadRequest(
            f"infer: request_id must be a string of 1..{MAX_REQUEST_ID_LENGTH} characters"
        )
    deadline_ms = options.get("deadline_ms")
    if deadline_ms is not None and (
        isinstance(deadline_ms, bool)
        or not isinstance(deadline_ms, (int, float))
        or not math.isfinite(deadline_ms)
        or deadline_ms <= 0
    ):
        raise BadRequest(f"infer: deadline_ms must be a positive number, got {deadline_ms!r}")
    detail = options.get("detail", False)
    if not isinstance(detail, bool):
        raise BadRequest(f"infer: detail must be true or false, got {detail!r}")
    version = options.get("version")
    if version is not None:
        try:
            check_version(version, "infer: version")
        except ConfigError as exc:
            raise BadRequest(exc.message) from None
    return InferRequest(
        model=model,
        detail=detail,
        inputs=inputs,
        request_id=request_id,
        deadline_ms=None if deadline_ms is None else float(deadline_ms),
        escalation=parse_override(
            options.get("escalate"), options.get("escalate_threshold"), "infer"
        ),
        version=version,
    )
