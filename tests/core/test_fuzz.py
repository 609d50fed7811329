"""Structure-aware fuzzing of everything that parses what a peer sends.

Random bytes are covered in test_framing; here the inputs are valid msgpack
objects of random shape, which get past the byte-level parser and exercise
the checks behind it. Whatever comes in, the answer is a parsed value or an
error from the tree, never another exception.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.wire.framing import InvalidMessage, Notification, Request, Response, parse_message
from mesh.core.wire.requests import InferRequest, parse_infer
from mesh.core.wire.tensors import decode_tensor, decode_tensors
from mesh.errors import MeshError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=64)
    | st.sampled_from(["<f4", "|u1", "<i8", "|O", "dtype", "shape", "data", "X"])
)
objects = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["dtype", "shape", "data", "X"]),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)
tensorish = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["<f4", "<f8", "|u1", "|b1", "<i8", "|O", ">f4", "<c8"]),
        "shape": st.lists(st.integers(min_value=-2, max_value=5), max_size=4),
        "data": st.binary(max_size=128),
    }
)


@given(objects)
@settings(max_examples=400)
def test_any_object_is_classified_as_a_message_or_invalid(obj: Any) -> None:
    event = parse_message(obj)
    assert isinstance(event, Request | Response | Notification | InvalidMessage)


@given(st.integers(0, 2) | st.integers(), st.lists(objects, max_size=4))
@settings(max_examples=400)
def test_message_shaped_arrays_are_classified(kind: int, rest: list[Any]) -> None:
    event = parse_message([kind, *rest])
    assert isinstance(event, Request | Response | Notification | InvalidMessage)


@given(objects | tensorish)
@settings(max_examples=400)
def test_tensor_decoding_gives_an_array_or_invalid_input(obj: Any) -> None:
    try:
        array = decode_tensor(obj)
    except MeshError:
        return
    assert array.dtype.kind in "biuf"


@given(
    st.lists(st.text(max_size=12) | objects, max_size=2),
    st.dictionaries(st.text(max_size=4), tensorish | objects, max_size=3),
    objects,
)
@settings(max_examples=400)
def test_infer_params_give_a_request_or_a_typed_error(
    head: list[Any], inputs: dict[str, Any], options: Any
) -> None:
    for params in ([*head[:1], inputs], [*head[:1], inputs, options], head):
        try:
            request = parse_infer(params)
        except MeshError:
            continue
        assert isinstance(request, InferRequest)
        assert all(a.dtype.kind in "biuf" for a in request.inputs.values())


@given(st.dictionaries(st.text(max_size=4), tensorish, max_size=3))
def test_decode_tensors_is_all_or_nothing(inputs: dict[str, Any]) -> None:
    try:
        decoded = decode_tensors(inputs)
    except MeshError:
        return
    assert set(decoded) == set(inputs)


hearsay_entries = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=4) | objects,
        "id": st.text(max_size=4) | objects,
        "incarnation": st.integers(-2, 2**64) | objects,
        "host": st.sampled_from(["127.0.0.1", "0.0.0.0", "a b", "::1", "h"]) | objects,
        "rpc_port": st.integers(-1, 70000) | objects,
        "state": st.sampled_from(["alive", "suspect", "dead", "zombie"]) | objects,
        "age_s": st.floats() | st.integers(-5, 5) | objects,
    },
)


@given(hearsay_entries | objects)
@settings(max_examples=500)
def test_the_fast_digest_path_agrees_with_the_careful_one(entry: Any) -> None:
    """The fast path may only accept what the careful parser accepts, and the same way."""
    from mesh.core.membership.gossip import _hearsay, _quick_hearsay

    try:
        careful: Any = _hearsay(entry, "members[0]")
    except MeshError as exc:
        careful = exc.message
    try:
        fast: Any = _quick_hearsay(entry, 0)
    except MeshError as exc:
        fast = exc.message
    assert fast == careful
