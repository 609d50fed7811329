"""The SDK's value types: :class:`Inference`, :class:`ModelInfo`, :class:`TensorInfo`.

Also the conversions between them and the wire (numpy in, numpy out; see
docs/PROTOCOL.md for the tensor map).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mesh.core.models.signatures import ModelSpec, TensorSpec
from mesh.core.wire.tensors import decode_tensors, encode_tensors
from mesh.errors import InvalidInput, ProtocolError

__all__ = ["Inference", "ModelInfo", "TensorInfo", "encode_inputs", "inference_from_reply"]


class Inference(dict[str, NDArray[Any]]):
    """A request's outputs by name (a dict of numpy arrays), and where it was served.

    ``ran_on`` is the name of the node that ran it, or ``"gateway"``; ``node``
    the address of the node that answered (the request's entry node);
    ``request_id`` the id it was sent under, on every try.
    """

    __slots__ = ("node", "ran_on", "request_id")

    def __init__(
        self, outputs: Mapping[str, NDArray[Any]], *, ran_on: str, node: str, request_id: str
    ) -> None:
        super().__init__(outputs)
        self.ran_on = ran_on
        self.node = node
        self.request_id = request_id

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{name!r}: {array.dtype}{list(array.shape)}" for name, array in self.items()
        )
        return f"Inference({{{shapes}}}, ran_on={self.ran_on!r}, node={self.node!r})"


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model: name, numpy dtype name, shape (-1 = any size)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A model a node serves, as ``models()`` reports it."""

    name: str
    version: str
    sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    description: str = ""
    accuracy: float | None = None
    compute_only: bool = False

    @classmethod
    def from_wire(cls, obj: object) -> ModelInfo:
        """Build from one entry of the ``models()`` reply; ProtocolError if malformed.

        Parsed by the core's :meth:`ModelSpec.from_wire`, as a peer parses it,
        so the wire form of a model has one reader.
        """
        try:
            spec = ModelSpec.from_wire(obj)
        except ProtocolError as exc:
            raise ProtocolError(f"models(): malformed model entry: {exc.message}") from None
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ModelInfo:
        """The SDK's view of a core :class:`ModelSpec`: dtypes by name, -1 for any size."""
        return cls(
            name=spec.name,
            version=spec.version,
            sha256=spec.sha256,
            inputs=tuple(_tensor_info(t) for t in spec.inputs),
            outputs=tuple(_tensor_info(t) for t in spec.outputs),
            description=spec.description,
            accuracy=spec.accuracy,
            compute_only=spec.compute_only,
        )


def _tensor_info(spec: TensorSpec) -> TensorInfo:
    shape = tuple(-1 if d is None else d for d in spec.shape)
    return TensorInfo(name=spec.name, dtype=spec.dtype.name, shape=shape)


def inference_from_reply(reply: object, *, node: str, request_id: str) -> Inference:
    """An :class:`Inference` from an ``infer`` reply asked with ``detail``."""
    if not isinstance(reply, dict) or not isinstance(reply.get("ran_on"), str):
        raise ProtocolError("the node's detailed infer reply lacks 'ran_on'")
    try:
        outputs = decode_tensors(reply.get("outputs"), what="outputs")
    except InvalidInput as exc:
        raise ProtocolError(f"the node's infer reply is malformed: {exc.message}") from None
    return Inference(outputs, ran_on=reply["ran_on"], node=node, request_id=request_id)


def encode_inputs(inputs: Mapping[str, ArrayLike]) -> dict[str, Any]:
    """The ``inputs`` argument of ``infer``: each array as a tensor map; no object arrays."""
    if not isinstance(inputs, Mapping):
        raise InvalidInput(
            f"inputs must be a mapping of input name to array, got {type(inputs).__name__}"
        )
    arrays = {}
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise InvalidInput(f"input {name!r}: object arrays cannot be sent; use a numeric dtype")
        arrays[name] = array
    return encode_tensors(arrays)
