"""The messages that move work between nodes, and their strict parsers.

Between peers of one mesh (over links that passed the mesh-key handshake):

* ``steal(ask)`` (a call, thief → victim): ``ask`` is a map (see
  :class:`~mesh.core.scheduling.scheduler.StealAsk`); the answer is ``{"jobs": [job...],
  "load": load}``, where each job is a map with the request and its inputs.
* ``result(owner_id, seq, epoch, ran_on, outcome)`` (a notification, holder →
  owner): ``outcome`` is ``{"outputs": tensors}`` or ``{"error": [code, msg]}``.
* ``handoff(owner_id, seq, epoch, holder, lease_s[, ask])`` (holder → owner):
  the request moved on to ``holder``, taken by its steal ask number ``ask``
  (optional: reconciliation needs it, older nodes do not send it).
* ``cancel(owner_id, seq)`` (owner → holder): the request is no longer wanted.
* ``nudge(name)`` (loaded node → idle peer): come and steal.
* ``giveback(owner_id, seq, epoch, holder)`` (draining holder → owner): the
  request comes back unrun; requeue it now, not when the lease runs out.

Everything here comes from the network, so each field is checked, and a
:class:`~mesh.errors.BadRequest` names the field and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.core.membership.gossip import MAX_MODELS, MAX_SECONDS, MAX_SLOTS, MAX_TEXT
from mesh.core.models.signatures import check_model_name
from mesh.core.scheduling.jobs import Job, PeerLoad, StealAsk, models_to_wire
from mesh.core.wire.tensors import Tensors, decode_tensors, encode_tensors
from mesh.errors import BadRequest, MeshError, error_from_wire

__all__ = [
    "CANCEL",
    "GIVE_BACK",
    "HANDOFF",
    "MAX_GRANT",
    "NUDGE",
    "RESULT",
    "STEAL",
    "GiveBackNotice",
    "Handoff",
    "Outcome",
    "ResultNotice",
    "Tensors",
    "encode_grant",
    "encode_outcome",
    "parse_cancel",
    "parse_giveback",
    "parse_grant",
    "parse_handoff",
    "parse_nudge",
    "parse_result",
    "parse_steal_ask",
]

STEAL = "steal"
RESULT = "result"
HANDOFF = "handoff"
CANCEL = "cancel"
NUDGE = "nudge"
GIVE_BACK = "giveback"
# Jobs in one grant; a victim never sends more (SchedulerConfig caps it lower).
MAX_GRANT = 4096
_MAX_MOVES = 64
_MAX_SEQ = 2**63 - 1

# What a run produced: its outputs, or the error to give the client.
Outcome = Tensors | MeshError


@dataclass(frozen=True, slots=True)
class ResultNotice:
    """A checked ``result`` notification."""

    owner_id: str
    seq: int
    epoch: int
    ran_on: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Handoff:
    """A checked ``handoff`` notification."""

    owner_id: str
    seq: int
    epoch: int
    holder: str
    lease_s: float
    ask: int | None = None


# --- field checks ------------------------------------------------------------------


def _text(what: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise BadRequest(f"{what} must be a string of 1..{MAX_TEXT} characters, got {value!r}")
    return value


def _count(what: str, value: object, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise BadRequest(f"{what} must be an integer 0..{limit}, got {value!r}")
    return value


def _seconds(what: str, value: object, *, positive: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_SECONDS
        or (positive and value <= 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise BadRequest(f"{what} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def _map(what: str, value: object) -> Mapping[Any, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a map, got {type(value).__name__}")
    return value


def _models(what: str, value: object) -> dict[str, frozenset[str]]:
    table = _map(what, value)
    if len(table) > MAX_MODELS:
        raise BadRequest(f"{what} lists {len(table)} models; at most {MAX_MODELS}")
    out: dict[str, frozenset[str]] = {}
    for name, shas in table.items():
        where = f"{what}[{name!r}]"
        # One version: its sha256; several: a list of them (see models_to_wire).
        if isinstance(shas, list):
            if not 1 <= len(shas) <= MAX_MODELS:
                raise BadRequest(f"{where}: expected 1 to {MAX_MODELS} sha256 values")
            out[_model(f"{what} key", name)] = frozenset(_text(where, s) for s in shas)
        else:
            out[_model(f"{what} key", name)] = frozenset({_text(where, shas)})
    return out


def _model(what: str, value: object) -> str:
    name = _text(what, value)
    try:
        check_model_name(name)
    except MeshError as exc:
        raise BadRequest(f"{what}: {exc.message}") from None
    return name


def _service(what: str, value: object) -> dict[str, float]:
    table = _map(what, value)
    if len(table) > MAX_MODELS:
        raise BadRequest(f"{what} lists {len(table)} models; at most {MAX_MODELS}")
    return {
        _model(f"{what} key", name): _seconds(f"{what}[{name!r}]", seconds, positive=True)
        for name, seconds in table.items()
    }


def _fields(what: str, value: object, required: frozenset[str]) -> Mapping[str, Any]:
    table = _map(what, value)
    missing = sorted(required - set(table))
    if missing:
        raise BadRequest(f"{what} lacks {', '.join(missing)}")
    return table


def _params(method: str, params: list[Any], count: int) -> None:
    if len(params) != count:
        raise BadRequest(f"{method} takes {count} parameters, got {len(params)}")


# --- steal ------------------------------------------------------------------------------

_ASK_FIELDS = frozenset(
    {"thief", "models", "slots", "free_slots", "wait_s", "service_s", "rtt_s", "bandwidth_bps"}
)


def parse_steal_ask(params: list[Any]) -> StealAsk:
    """``steal``'s one parameter, checked."""
    _params(STEAL, params, 1)
    ask = _fields("steal ask", params[0], _ASK_FIELDS)
    bandwidth = ask["bandwidth_bps"]
    if (
        isinstance(bandwidth, bool)
        or not isinstance(bandwidth, (int, float))
        or not math.isfinite(bandwidth)
        or bandwidth <= 0
    ):
        raise BadRequest(f"steal ask: bandwidth_bps must be a positive number, got {bandwidth!r}")
    slots = _count("steal ask: slots", ask["slots"], MAX_SLOTS)
    if slots < 1:
        raise BadRequest("steal ask: slots must be at least 1")
    return StealAsk(
        thief=_text("steal ask: thief", ask["thief"]),
        models=_models("steal ask: models", ask["models"]),
        slots=slots,
        free_slots=_count("steal ask: free_slots", ask["free_slots"], MAX_SLOTS),
        wait_s=_seconds("steal ask: wait_s", ask["wait_s"]),
        service_s=_service("steal ask: service_s", ask["service_s"]),
        rtt_s=_seconds("steal ask: rtt_s", ask["rtt_s"]),
        bandwidth_bps=float(bandwidth),
        # Optional: older thieves do not number their asks.
        ask=None if ask.get("ask") is None else _count("steal ask: ask", ask["ask"], _MAX_SEQ),
    )


def encode_grant(jobs: list[Job[Tensors]], load: PeerLoad, now: float) -> dict[str, Any]:
    """The answer to ``steal``: the jobs handed over, and the victim's load after."""
    return {
        "jobs": [
            {
                "owner": job.owner,
                "owner_id": job.key[0],
                "seq": job.key[1],
                "epoch": job.epoch,
                "model": job.model,
                "sha256": job.sha256,
                "inputs": encode_tensors(job.payload),
                # Relative, as clocks of two machines are not comparable.
                "deadline_ms": None
                if job.deadline is None
                else max(0.0, (job.deadline - now) * 1000),
                "moves": job.moves,
                "request_id": job.request_id,
            }
            for job in jobs
        ],
        "load": {
            "models": models_to_wire(load.models),
            "service_s": dict(load.service_s),
            "queued_s": load.queued_s,
            "free_slots": load.free_slots,
            "slots": load.slots,
        },
    }


_JOB_FIELDS = frozenset(
    {"owner", "owner_id", "seq", "epoch", "model", "sha256", "inputs", "deadline_ms", "moves"}
)
_LOAD_FIELDS = frozenset({"models", "service_s", "queued_s", "free_slots"})


def parse_grant(reply: object, now: float) -> tuple[list[Job[Tensors]], PeerLoad]:
    """The victim's answer to ``steal``, checked; deadlines put on our clock."""
    answer = _fields("steal reply", reply, frozenset({"jobs", "load"}))
    raw_jobs = answer["jobs"]
    if not isinstance(raw_jobs, list) or len(raw_jobs) > MAX_GRANT:
        raise BadRequest(f"steal reply: jobs must be a list of at most {MAX_GRANT}")
    jobs = [_parse_job(raw, now) for raw in raw_jobs]
    load = _fields("steal reply: load", answer["load"], _LOAD_FIELDS)
    return jobs, PeerLoad(
        models=_models("steal reply: load.models", load["models"]),
        service_s=_service("steal reply: load.service_s", load["service_s"]),
        queued_s=_seconds("steal reply: load.queued_s", load["queued_s"]),
        free_slots=_count("steal reply: load.free_slots", load["free_slots"], MAX_SLOTS),
        slots=max(1, _count("steal reply: load.slots", load.get("slots", 1), MAX_SLOTS)),
    )


def _parse_job(raw: object, now: float) -> Job[Tensors]:
    job = _fields("granted job", raw, _JOB_FIELDS)
    inputs = decode_tensors(job["inputs"])
    sha = job["sha256"]
    if sha is not None:
        sha = _text("granted job: sha256", sha)
    deadline_ms = job["deadline_ms"]
    deadline = (
        None
        if deadline_ms is None
        else now + _seconds("granted job: deadline_ms", deadline_ms) / 1000
    )
    request_id = job.get("request_id")
    if request_id is not None:
        request_id = _text("granted job: request_id", request_id)
    return Job(
        key=(_text("granted job: owner_id", job["owner_id"]), _count("seq", job["seq"], _MAX_SEQ)),
        owner=_text("granted job: owner", job["owner"]),
        model=_model("granted job: model", job["model"]),
        sha256=sha,
        epoch=_count("granted job: epoch", job["epoch"], _MAX_SEQ),
        payload=inputs,
        size_bytes=sum(a.nbytes for a in inputs.values()),
        deadline=deadline,
        moves=_count("granted job: moves", job["moves"], _MAX_MOVES),
        request_id=request_id,
        enqueued_at=now,
    )


# --- result, handoff, cancel, nudge ----------------------------------------------------


def encode_outcome(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, MeshError):
        return {"error": outcome.to_wire()}
    return {"outputs": encode_tensors(outcome)}


def parse_result(params: list[Any]) -> ResultNotice:
    """A ``result`` notification, checked."""
    _params(RESULT, params, 5)
    owner_id, seq, epoch, ran_on, raw = params
    outcome_map = _map("result: outcome", raw)
    outcome: Outcome
    if set(outcome_map) == {"outputs"}:
        outcome = decode_tensors(outcome_map["outputs"], what="outputs")
    elif set(outcome_map) == {"error"}:
        # error_from_wire maps any malformed error onto a RemoteError itself.
        outcome = error_from_wire(outcome_map["error"])
    else:
        raise BadRequest("result: outcome must be {'outputs': ...} or {'error': [code, message]}")
    return ResultNotice(
        owner_id=_text("result: owner_id", owner_id),
        seq=_count("result: seq", seq, _MAX_SEQ),
        epoch=_count("result: epoch", epoch, _MAX_SEQ),
        ran_on=_text("result: ran_on", ran_on),
        outcome=outcome,
    )


def parse_handoff(params: list[Any]) -> Handoff:
    """A ``handoff`` notification, checked."""
    if len(params) not in (5, 6):  # the ask number is optional
        raise BadRequest(
            f"{HANDOFF} takes 5 parameters, got {len(params)} (or 6, with the steal ask's number)"
        )
    owner_id, seq, epoch, holder, lease_s = params[:5]
    ask = params[5] if len(params) == 6 else None
    return Handoff(
        owner_id=_text("handoff: owner_id", owner_id),
        seq=_count("handoff: seq", seq, _MAX_SEQ),
        epoch=_count("handoff: epoch", epoch, _MAX_SEQ),
        holder=_text("handoff: holder", holder),
        lease_s=_seconds("handoff: lease_s", lease_s, positive=True),
        ask=None if ask is None else _count("handoff: ask", ask, _MAX_SEQ),
    )


def parse_cancel(params: list[Any]) -> tuple[str, int]:
    """A ``cancel`` notification, checked: the job's key."""
    _params(CANCEL, params, 2)
    return _text("cancel: owner_id", params[0]), _count("cancel: seq", params[1], _MAX_SEQ)


def parse_nudge(params: list[Any]) -> str:
    """A ``nudge`` notification, checked: the name of the node with work."""
    _params(NUDGE, params, 1)
    return _text("nudge: name", params[0])


# --- giveback (a draining holder) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class GiveBackNotice:
    """A checked ``giveback`` notification: ``holder`` hands request ``seq`` back."""

    owner_id: str
    seq: int
    epoch: int
    holder: str


def parse_giveback(params: list[Any]) -> GiveBackNotice:
    """A ``giveback`` notification, checked."""
    _params(GIVE_BACK, params, 4)
    owner_id, seq, epoch, holder = params
    return GiveBackNotice(
        owner_id=_text("giveback: owner_id", owner_id),
        seq=_count("giveback: seq", seq, _MAX_SEQ),
        epoch=_count("giveback: epoch", epoch, _MAX_SEQ),
        holder=_text("giveback: holder", holder),
    )
