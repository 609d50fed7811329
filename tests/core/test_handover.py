"""The messages of work stealing: round trips over msgpack, and every malformed one refused.

Each parser faces the network, so each gets a table of broken messages (wrong
counts, wrong types, bools posing as integers, NaN and negative seconds,
oversized lists, bad model names), each refused with a :class:`BadRequest`
that names the field, and a fuzz run: whatever msgpack-able object comes in,
the answer is a parsed message or an error from the tree, never another
exception.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.membership.gossip import MAX_MODELS, MAX_SLOTS, MAX_TEXT
from mesh.core.scheduling.jobs import (
    Job,
    PeerLoad,
    RunLocal,
    SchedulerConfig,
    Steal,
    StealAsk,
)
from mesh.core.scheduling.scheduler import Scheduler
from mesh.core.wire.handover import (
    MAX_GRANT,
    Handoff,
    ResultNotice,
    Tensors,
    encode_grant,
    encode_outcome,
    parse_cancel,
    parse_grant,
    parse_handoff,
    parse_nudge,
    parse_result,
    parse_steal_ask,
)
from mesh.errors import (
    BadRequest,
    DeadlineExceeded,
    InvalidInput,
    MeshError,
    ModelNotFound,
    RemoteError,
)

M = "digits-small"
SHA = "ab" * 32
INPUTS: Tensors = {
    "x": np.arange(12, dtype=np.float32).reshape(3, 4),
    "mask": np.array([1, 0, 1], dtype=np.uint8),
}


def over_the_wire(obj: Any) -> Any:
    """What the other side unpacks, as the RPC layer packs and unpacks it."""
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


def job(seq: int = 7, **fields: Any) -> Job[Tensors]:
    values: dict[str, Any] = {
        "key": ("id-a", seq),
        "owner": "a",
        "model": M,
        "sha256": SHA,
        "epoch": 2,
        "payload": INPUTS,
        "size_bytes": sum(a.nbytes for a in INPUTS.values()),
        "deadline": 10.25,
        "moves": 1,
        "request_id": "req-7",
    }
    values.update(fields)
    return Job(**values)


LOAD = PeerLoad(models={M: frozenset({SHA})}, service_s={M: 0.004}, queued_s=0.125, free_slots=0)
ASK = StealAsk(
    thief="b",
    models={M: frozenset({SHA}), "cnn-heavy": frozenset({"cd" * 32})},
    slots=2,
    free_slots=1,
    wait_s=0.015,
    service_s={M: 0.004},
    rtt_s=0.0015,
    bandwidth_bps=12.5e6,
)


# --- round trips -----------------------------------------------------------------------------


def test_steal_ask_round_trip() -> None:
    assert parse_steal_ask([over_the_wire(ASK.to_wire())]) == ASK


def test_steal_ask_from_a_scheduler_round_trips() -> None:
    thief: Scheduler[Tensors] = Scheduler(
        node_id="id-b", name="b", models={M: frozenset({SHA})}, config=SchedulerConfig(slots=3)
    )
    thief.observe_service(M, 0.02)
    (steal,) = thief.nudged("a", 0.0)
    assert isinstance(steal, Steal)
    assert parse_steal_ask([over_the_wire(steal.ask.to_wire())]) == steal.ask


# (deadline, sha256, request_id) of the job sent; the victim's clock is at 10.0.
GRANTS = {
    "every field": (10.25, SHA, "req-7"),
    "no deadline": (None, SHA, "req-7"),
    "any holder of the name": (10.25, None, "req-7"),
    "no request id": (10.25, SHA, None),
    "deadline due now": (10.0, SHA, None),
    "deadline passed: due at once": (9.5, SHA, None),
}


@pytest.mark.parametrize(("deadline", "sha", "request_id"), GRANTS.values(), ids=GRANTS.keys())
def test_grant_round_trip(deadline: float | None, sha: str | None, request_id: str | None) -> None:
    sent = [job(7, deadline=deadline, sha256=sha, request_id=request_id), job(8)]
    # The thief's clock reads 500.0 when it parses: deadlines are relative on the wire.
    jobs, load = parse_grant(over_the_wire(encode_grant(sent, LOAD, 10.0)), 500.0)
    assert load == LOAD
    assert len(jobs) == 2
    got = jobs[0]
    assert got.key == ("id-a", 7) and got.owner == "a" and got.model == M
    assert (got.sha256, got.request_id, got.epoch, got.moves) == (sha, request_id, 2, 1)
    if deadline is None:
        assert got.deadline is None
    else:
        assert got.deadline == pytest.approx(500.0 + max(0.0, deadline - 10.0))
    assert got.enqueued_at == 500.0
    assert got.size_bytes == 48 + 3
    assert set(got.payload) == {"x", "mask"}
    for name, array in INPUTS.items():
        assert got.payload[name].dtype == array.dtype
        np.testing.assert_array_equal(got.payload[name], array)
    assert jobs[1].key == ("id-a", 8)


def test_an_empty_grant_round_trips() -> None:
    assert parse_grant(over_the_wire(encode_grant([], LOAD, 0.0)), 1.0) == ([], LOAD)


def test_a_grant_carries_a_request_from_victim_to_thief() -> None:
    """Two schedulers with the real wire between them: the thief runs what it parsed."""
    config = SchedulerConfig()
    victim: Scheduler[Tensors] = Scheduler(
        node_id="id-a", name="a", models={M: frozenset({SHA})}, config=config
    )
    thief: Scheduler[Tensors] = Scheduler(
        node_id="id-b", name="b", models={M: frozenset({SHA})}, config=config
    )
    for s in (victim, thief):
        s.observe_service(M, 0.01)
    thief.peer_update("a", victim.load_summary(0.0), 0.0)
    # The victim knows the thief too, so it keeps its queue stealable.
    victim.peer_update("b", thief.load_summary(0.0), 0.0)
    for _ in range(4):
        victim.submit(
            model=M, payload=INPUTS, size_bytes=51, deadline=5.0, request_id=None, now=0.0
        )
    (steal,) = thief.peer_update("a", victim.load_summary(0.0), 0.0)
    assert isinstance(steal, Steal)
    ask = parse_steal_ask([over_the_wire(steal.ask.to_wire())])
    granted, _ = victim.grant(ask, 0.0)
    jobs, load = parse_grant(
        over_the_wire(encode_grant(granted, victim.load_summary(0.0), 0.0)), 0.0
    )
    assert [j.key for j in jobs] == [j.key for j in granted] == [("id-a", 4), ("id-a", 3)]
    actions = thief.granted("a", jobs, load, took_s=0.002, reply_bytes=102, now=0.0)
    (run,) = [a for a in actions if isinstance(a, RunLocal)]
    assert run.job.key == ("id-a", 4) and run.job.deadline == 5.0
    np.testing.assert_array_equal(run.job.payload["x"], INPUTS["x"])


def test_outputs_round_trip() -> None:
    outputs: Tensors = {"probabilities": np.linspace(0, 1, 10, dtype=np.float32)[None, :]}
    params = over_the_wire(["id-a", 7, 2, "b", encode_outcome(outputs)])
    notice = parse_result(params)
    assert (notice.owner_id, notice.seq, notice.epoch, notice.ran_on) == ("id-a", 7, 2, "b")
    assert isinstance(notice.outcome, dict)
    np.testing.assert_array_equal(notice.outcome["probabilities"], outputs["probabilities"])


ERRORS = {
    "model not found": ModelNotFound("no node serves 'x'"),
    "deadline exceeded": DeadlineExceeded("too late"),
    "invalid input": InvalidInput("inputs['x']: bad shape"),
    "remote error with its own code": RemoteError("odd", remote_code="SomethingElse"),
}


@pytest.mark.parametrize("error", ERRORS.values(), ids=ERRORS.keys())
def test_an_error_outcome_round_trips(error: MeshError) -> None:
    notice = parse_result(over_the_wire(["id-a", 7, 0, "b", encode_outcome(error)]))
    assert type(notice.outcome) is type(error)
    assert isinstance(notice.outcome, MeshError)
    assert notice.outcome.to_wire() == error.to_wire()


def test_an_error_of_another_shape_is_a_remote_error() -> None:
    notice = parse_result(["id-a", 7, 0, "b", {"error": "plain text"}])
    assert isinstance(notice.outcome, RemoteError)
    assert "plain text" in notice.outcome.message


def test_handoff_cancel_and_nudge_round_trip() -> None:
    assert parse_handoff(over_the_wire(["id-a", 7, 1, "c", 5.25])) == Handoff(
        owner_id="id-a", seq=7, epoch=1, holder="c", lease_s=5.25
    )
    assert parse_handoff(["id-a", 7, 1, "c", 5]).lease_s == 5.0  # an int is fine
    assert parse_cancel(over_the_wire(["id-a", 7])) == ("id-a", 7)
    assert parse_nudge(over_the_wire(["a"])) == "a"
    assert isinstance(parse_result(["id-a", 0, 0, "b", {"outputs": {}}]), ResultNotice)


# --- malformed messages, one table per parser --------------------------------------------------

NAN, INF = math.nan, math.inf
TOO_LONG = "x" * (MAX_TEXT + 1)
TOO_MANY_MODELS = {f"m{i}": SHA for i in range(MAX_MODELS + 1)}


def ask_with(**fields: Any) -> list[Any]:
    """``steal``'s params: the good ask with ``fields`` changed (None removes one)."""
    wire = ASK.to_wire()
    for name, value in fields.items():
        if value is None:
            del wire[name]
        else:
            wire[name] = value
    return [wire]


BAD_ASKS: dict[str, tuple[list[Any], str]] = {
    "no params": ([], "steal takes 1 parameters, got 0"),
    "two params": ([ASK.to_wire(), {}], "steal takes 1 parameters, got 2"),
    "not a map": (["ask"], "steal ask must be a map, got str"),
    "missing fields": (ask_with(rtt_s=None, slots=None), "steal ask lacks rtt_s, slots"),
    "thief empty": (ask_with(thief=""), "steal ask: thief"),
    "thief too long": (ask_with(thief=TOO_LONG), "steal ask: thief"),
    "thief a number": (ask_with(thief=5), "steal ask: thief"),
    "models a list": (ask_with(models=[M]), "steal ask: models must be a map"),
    "models: bad name": (ask_with(models={"../etc": SHA}), "steal ask: models key"),
    "models: name a number": (ask_with(models={5: SHA}), "steal ask: models key"),
    "models: sha a number": (ask_with(models={M: 5}), "steal ask: models['digits-small']"),
    "models: too many": (ask_with(models=TOO_MANY_MODELS), "lists 1025 models; at most 1024"),
    "slots bool": (ask_with(slots=True), "steal ask: slots"),
    "slots zero": (ask_with(slots=0), "steal ask: slots must be at least 1"),
    "slots negative": (ask_with(slots=-1), "steal ask: slots"),
    "slots a float": (ask_with(slots=2.0), "steal ask: slots"),
    "slots too many": (ask_with(slots=MAX_SLOTS + 1), "steal ask: slots"),
    "free_slots negative": (ask_with(free_slots=-1), "steal ask: free_slots"),
    "free_slots bool": (ask_with(free_slots=False), "steal ask: free_slots"),
    "wait_s NaN": (ask_with(wait_s=NAN), "steal ask: wait_s"),
    "wait_s inf": (ask_with(wait_s=INF), "steal ask: wait_s"),
    "wait_s negative": (ask_with(wait_s=-0.5), "steal ask: wait_s"),
    "wait_s bool": (ask_with(wait_s=True), "steal ask: wait_s"),
    "wait_s text": (ask_with(wait_s="0"), "steal ask: wait_s"),
    "wait_s absurd": (ask_with(wait_s=2e9), "steal ask: wait_s"),
    "service_s a list": (ask_with(service_s=[0.1]), "steal ask: service_s must be a map"),
    "service_s zero": (ask_with(service_s={M: 0.0}), "steal ask: service_s['digits-small']"),
    "service_s NaN": (ask_with(service_s={M: NAN}), "steal ask: service_s['digits-small']"),
    "service_s negative": (ask_with(service_s={M: -1}), "steal ask: service_s['digits-small']"),
    "service_s bad name": (ask_with(service_s={"": 0.1}), "steal ask: service_s key"),
    "rtt_s NaN": (ask_with(rtt_s=NAN), "steal ask: rtt_s"),
    "rtt_s negative": (ask_with(rtt_s=-0.001), "steal ask: rtt_s"),
    "bandwidth zero": (ask_with(bandwidth_bps=0), "steal ask: bandwidth_bps"),
    "bandwidth negative": (ask_with(bandwidth_bps=-1e6), "steal ask: bandwidth_bps"),
    "bandwidth NaN": (ask_with(bandwidth_bps=NAN), "steal ask: bandwidth_bps"),
    "bandwidth inf": (ask_with(bandwidth_bps=INF), "steal ask: bandwidth_bps"),
    "bandwidth bool": (ask_with(bandwidth_bps=True), "steal ask: bandwidth_bps"),
    "bandwidth text": (ask_with(bandwidth_bps="fast"), "steal ask: bandwidth_bps"),
}


@pytest.mark.parametrize(("params", "message"), BAD_ASKS.values(), ids=BAD_ASKS.keys())
def test_a_malformed_steal_ask_is_refused(params: list[Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_steal_ask(params)
    assert message in caught.value.message


GOOD_GRANT = over_the_wire(encode_grant([job()], LOAD, 10.0))


def grant_with(job_fields: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """The good grant with fields of its job and of itself changed (None removes one)."""
    reply: dict[str, Any] = over_the_wire(GOOD_GRANT)
    for target, changes in ((reply["jobs"][0], job_fields or {}), (reply, fields)):
        for name, value in changes.items():
            if value is None:
                del target[name]
            else:
                target[name] = value
    return reply


def load_with(**fields: Any) -> dict[str, Any]:
    return grant_with(load={**GOOD_GRANT["load"], **fields})


# The reply to `steal` -> (the error class, words in its message).
BAD_GRANTS: dict[str, tuple[Any, type[MeshError], str]] = {
    "not a map": ([], BadRequest, "steal reply must be a map, got list"),
    "missing load": (grant_with(load=None), BadRequest, "steal reply lacks load"),
    "jobs a map": (grant_with(jobs={}), BadRequest, "steal reply: jobs must be a list"),
    "too many jobs": (
        grant_with(jobs=[None] * (MAX_GRANT + 1)),
        BadRequest,
        f"steal reply: jobs must be a list of at most {MAX_GRANT}",
    ),
    "job not a map": (grant_with(jobs=["job"]), BadRequest, "granted job must be a map"),
    "job lacks fields": (
        grant_with({"seq": None, "epoch": None}),
        BadRequest,
        "granted job lacks epoch, seq",
    ),
    "owner_id empty": (grant_with({"owner_id": ""}), BadRequest, "granted job: owner_id"),
    "owner a number": (grant_with({"owner": 1}), BadRequest, "granted job: owner"),
    "seq negative": (grant_with({"seq": -1}), BadRequest, "seq must be an integer"),
    "seq bool": (grant_with({"seq": True}), BadRequest, "seq must be an integer"),
    "seq a float": (grant_with({"seq": 7.0}), BadRequest, "seq must be an integer"),
    "epoch bool": (grant_with({"epoch": False}), BadRequest, "granted job: epoch"),
    "epoch negative": (grant_with({"epoch": -2}), BadRequest, "granted job: epoch"),
    "model bad name": (grant_with({"model": "a/b"}), BadRequest, "granted job: model"),
    "model a number": (grant_with({"model": 3}), BadRequest, "granted job: model"),
    "sha256 empty": (grant_with({"sha256": ""}), BadRequest, "granted job: sha256"),
    "sha256 a number": (grant_with({"sha256": 5}), BadRequest, "granted job: sha256"),
    "deadline_ms NaN": (grant_with({"deadline_ms": NAN}), BadRequest, "granted job: deadline_ms"),
    "deadline_ms inf": (grant_with({"deadline_ms": INF}), BadRequest, "granted job: deadline_ms"),
    "deadline_ms negative": (
        grant_with({"deadline_ms": -1.0}),
        BadRequest,
        "granted job: deadline_ms",
    ),
    "deadline_ms bool": (grant_with({"deadline_ms": True}), BadRequest, "granted job: deadline_ms"),
    "moves too many": (grant_with({"moves": 65}), BadRequest, "granted job: moves"),
    "moves bool": (grant_with({"moves": True}), BadRequest, "granted job: moves"),
    "request_id empty": (grant_with({"request_id": ""}), BadRequest, "granted job: request_id"),
    "request_id a number": (
        grant_with({"request_id": 5}),
        BadRequest,
        "granted job: request_id",
    ),
    "inputs not tensors": (grant_with({"inputs": [1, 2]}), InvalidInput, "inputs"),
    "inputs: bad tensor": (grant_with({"inputs": {"x": {"dtype": "|O"}}}), InvalidInput, "x"),
    "load a list": (grant_with(load=[]), BadRequest, "steal reply: load must be a map"),
    "load lacks free_slots": (
        grant_with(load={k: v for k, v in GOOD_GRANT["load"].items() if k != "free_slots"}),
        BadRequest,
        "steal reply: load lacks free_slots",
    ),
    "load: model bad name": (
        load_with(models={" x": SHA}),
        BadRequest,
        "steal reply: load.models key",
    ),
    "load: service_s NaN": (
        load_with(service_s={M: NAN}),
        BadRequest,
        "steal reply: load.service_s",
    ),
    "load: queued_s negative": (
        load_with(queued_s=-1.0),
        BadRequest,
        "steal reply: load.queued_s",
    ),
    "load: free_slots bool": (
        load_with(free_slots=True),
        BadRequest,
        "steal reply: load.free_slots",
    ),
}


@pytest.mark.parametrize(("reply", "error", "message"), BAD_GRANTS.values(), ids=BAD_GRANTS.keys())
def test_a_malformed_grant_is_refused(reply: Any, error: type[MeshError], message: str) -> None:
    with pytest.raises(error) as caught:
        parse_grant(reply, 0.0)
    assert message in caught.value.message


OUTPUTS = encode_outcome({"y": np.zeros(2, dtype=np.float32)})
BAD_RESULTS: dict[str, tuple[list[Any], type[MeshError], str]] = {
    "four params": (["id-a", 1, 0, "b"], BadRequest, "result takes 5 parameters, got 4"),
    "six params": (["id-a", 1, 0, "b", OUTPUTS, 0], BadRequest, "result takes 5 parameters"),
    "outcome a list": (["id-a", 1, 0, "b", []], BadRequest, "result: outcome must be a map"),
    "outcome empty": (["id-a", 1, 0, "b", {}], BadRequest, "result: outcome must be"),
    "outcome both": (
        ["id-a", 1, 0, "b", {**OUTPUTS, "error": ["X", "y"]}],
        BadRequest,
        "result: outcome must be",
    ),
    "outcome unknown key": (["id-a", 1, 0, "b", {"out": {}}], BadRequest, "result: outcome"),
    "outputs not tensors": (["id-a", 1, 0, "b", {"outputs": 5}], InvalidInput, "outputs"),
    "owner_id empty": (["", 1, 0, "b", OUTPUTS], BadRequest, "result: owner_id"),
    "owner_id too long": ([TOO_LONG, 1, 0, "b", OUTPUTS], BadRequest, "result: owner_id"),
    "seq bool": (["id-a", True, 0, "b", OUTPUTS], BadRequest, "result: seq"),
    "seq negative": (["id-a", -1, 0, "b", OUTPUTS], BadRequest, "result: seq"),
    "seq a float": (["id-a", 1.0, 0, "b", OUTPUTS], BadRequest, "result: seq"),
    "epoch text": (["id-a", 1, "0", "b", OUTPUTS], BadRequest, "result: epoch"),
    "ran_on a number": (["id-a", 1, 0, 7, OUTPUTS], BadRequest, "result: ran_on"),
}


@pytest.mark.parametrize(
    ("params", "error", "message"), BAD_RESULTS.values(), ids=BAD_RESULTS.keys()
)
def test_a_malformed_result_is_refused(
    params: list[Any], error: type[MeshError], message: str
) -> None:
    with pytest.raises(error) as caught:
        parse_result(params)
    assert message in caught.value.message


BAD_HANDOFFS: dict[str, tuple[list[Any], str]] = {
    "four params": (["id-a", 1, 0, "c"], "handoff takes 5 parameters, got 4"),
    "owner_id a number": ([1, 1, 0, "c", 5.0], "handoff: owner_id"),
    "seq bool": (["id-a", False, 0, "c", 5.0], "handoff: seq"),
    "seq too big": (["id-a", 2**63, 0, "c", 5.0], "handoff: seq"),
    "epoch negative": (["id-a", 1, -1, "c", 5.0], "handoff: epoch"),
    "holder empty": (["id-a", 1, 0, "", 5.0], "handoff: holder"),
    "lease_s zero": (["id-a", 1, 0, "c", 0.0], "handoff: lease_s must be a finite number of"),
    "lease_s negative": (["id-a", 1, 0, "c", -5.0], "handoff: lease_s"),
    "lease_s NaN": (["id-a", 1, 0, "c", NAN], "handoff: lease_s"),
    "lease_s inf": (["id-a", 1, 0, "c", INF], "handoff: lease_s"),
    "lease_s bool": (["id-a", 1, 0, "c", True], "handoff: lease_s"),
    "lease_s text": (["id-a", 1, 0, "c", "5"], "handoff: lease_s"),
}


@pytest.mark.parametrize(("params", "message"), BAD_HANDOFFS.values(), ids=BAD_HANDOFFS.keys())
def test_a_malformed_handoff_is_refused(params: list[Any], message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_handoff(params)
    assert message in caught.value.message


BAD_SMALL: dict[str, tuple[Any, list[Any], str]] = {
    "cancel: one param": (parse_cancel, ["id-a"], "cancel takes 2 parameters, got 1"),
    "cancel: owner_id empty": (parse_cancel, ["", 1], "cancel: owner_id"),
    "cancel: seq bool": (parse_cancel, ["id-a", True], "cancel: seq"),
    "cancel: seq text": (parse_cancel, ["id-a", "1"], "cancel: seq"),
    "nudge: no params": (parse_nudge, [], "nudge takes 1 parameters, got 0"),
    "nudge: name empty": (parse_nudge, [""], "nudge: name"),
    "nudge: name a number": (parse_nudge, [5], "nudge: name"),
    "nudge: name too long": (parse_nudge, [TOO_LONG], "nudge: name"),
}


@pytest.mark.parametrize(("parse", "params", "message"), BAD_SMALL.values(), ids=BAD_SMALL.keys())
def test_a_malformed_cancel_or_nudge_is_refused(
    parse: Any, params: list[Any], message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(params)
    assert message in caught.value.message


# --- fuzzing: junk in, a message or a MeshError out ----------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=16)
    | st.sampled_from([M, SHA, "id-a", "", "<f4", "|u1"])
)
objects = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def mutated(message: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``message`` with some of its fields replaced by junk, and maybe some dropped."""
    fields = {name: st.just(value) | objects for name, value in message.items()}
    return st.fixed_dictionaries(fields) | st.fixed_dictionaries({}, optional=fields)


asks = mutated(ASK.to_wire())
grant_fields = {
    "jobs": st.lists(mutated(GOOD_GRANT["jobs"][0]) | objects, max_size=3) | objects,
    "load": mutated(GOOD_GRANT["load"]) | objects,
}
grants = st.fixed_dictionaries(grant_fields) | st.fixed_dictionaries({}, optional=grant_fields)


@given(st.tuples(asks).map(list) | st.lists(asks | objects, max_size=2))
@settings(max_examples=75)
def test_any_steal_ask_parses_or_is_a_mesh_error(params: list[Any]) -> None:
    try:
        ask = parse_steal_ask(params)
    except MeshError:
        return
    assert ask.slots >= 1 and ask.bandwidth_bps > 0 and math.isfinite(ask.wait_s)


@given(grants | objects, st.floats(min_value=0, max_value=1e6))
@settings(max_examples=75)
def test_any_grant_parses_or_is_a_mesh_error(reply: Any, now: float) -> None:
    try:
        jobs, _ = parse_grant(reply, now)
    except MeshError:
        return
    assert all(j.deadline is None or j.deadline >= now for j in jobs)


@given(st.lists(objects, max_size=6), st.sampled_from(range(4)))
@settings(max_examples=75)
def test_any_notification_parses_or_is_a_mesh_error(params: list[Any], which: int) -> None:
    parse = [parse_result, parse_handoff, parse_cancel, parse_nudge][which]
    try:
        parse(params)
    except MeshError:
        return


@given(
    st.text(max_size=4) | objects,
    st.integers(-1, 3) | objects,
    st.integers(-1, 3) | objects,
    st.text(max_size=4) | objects,
    st.fixed_dictionaries({}, optional={"outputs": objects, "error": objects}) | objects,
)
@settings(max_examples=75)
def test_any_result_parses_or_is_a_mesh_error(
    owner_id: Any, seq: Any, epoch: Any, ran_on: Any, outcome: Any
) -> None:
    try:
        notice = parse_result([owner_id, seq, epoch, ran_on, outcome])
    except MeshError:
        return
    assert isinstance(notice.outcome, dict | MeshError)
