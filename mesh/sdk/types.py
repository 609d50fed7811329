"""The SDK's value types: :class:`Inference`, :class:`ModelInfo`, :class:`TensorInfo`,
:class:`ModelLocation` and :class:`MeshModels`.

Also the conversions between them and the wire (numpy in, numpy out; see
docs/PROTOCOL.md for the tensor map).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mesh.core.models.signatures import ModelSpec, TensorSpec
from mesh.core.wire.tensors import decode_tensors, encode_tensors
from mesh.errors import InvalidInput, ProtocolError

__all__ = [
    "Inference",
    "MeshModels",
    "ModelInfo",
    "ModelLocation",
    "TensorInfo",
    "encode_inputs",
    "inference_from_reply",
    "mesh_models_from_reply",
]


class Inference(dict[str, NDArray[Any]]):
    """A request's outputs by name (a dict of numpy arrays), and where it was served.

    ``ran_on`` is the name of the node that ran it, or ``"gateway"``; ``node``
    the address of the node that answered (the request's entry node);
    ``request_id`` the id it was sent under, on every try. For a model with an
    escalation rule, ``escalation`` holds the answer's joint-inference fields
    (``escalated``, ``escalation_ran_on``, ``escalation_reason``, ...; see
    the README) and ``escalated`` says whether the target model answered any row.
    """

    __slots__ = ("escalation", "node", "ran_on", "request_id")

    def __init__(
        self,
        outputs: Mapping[str, NDArray[Any]],
        *,
        ran_on: str,
        node: str,
        request_id: str,
        escalation: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(outputs)
        self.ran_on = ran_on
        self.node = node
        self.request_id = request_id
        self.escalation = escalation

    @property
    def escalated(self) -> bool | None:
        """Whether rows escalated to a bigger model; None when the model has no rule."""
        return None if self.escalation is None else bool(self.escalation.get("escalated"))

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


@dataclass(frozen=True)
class ModelLocation:
    """A model the mesh can serve, and one place it is.

    ``where`` is ``"here"`` (on the node asked; ``node`` is its name),
    ``"peer"`` (``node`` is the live peer's name) or ``"gateway"`` (``node``
    is its URL). ``sha256`` is None for the gateway's models: the Open
    Inference Protocol does not give it. ``info``, the whole signature, only
    for the models here (gossip carries names and checksums).
    """

    name: str
    sha256: str | None
    where: Literal["here", "peer", "gateway"]
    node: str
    info: ModelInfo | None = None


class MeshModels(list[ModelLocation]):
    """``mesh_models()``: every model and place, sorted by name then place.

    ``gateway`` is the node's gateway URL (None without one);
    ``gateway_error`` says why the gateway's models are missing, if they are.
    """

    __slots__ = ("gateway", "gateway_error")

    def __init__(
        self,
        locations: Iterable[ModelLocation],
        *,
        gateway: str | None = None,
        gateway_error: str | None = None,
    ) -> None:
        super().__init__(locations)
        self.gateway = gateway
        self.gateway_error = gateway_error


_WHERE = ("here", "peer", "gateway")


def mesh_models_from_reply(reply: object) -> MeshModels:
    """Parse ``models([{"scope": "mesh"}])``'s reply; ProtocolError if malformed."""
    if not isinstance(reply, dict) or not isinstance(reply.get("models"), list):
        raise ProtocolError("mesh_models(): expected a map with a 'models' list")
    locations = []
    for index, entry in enumerate(reply["models"]):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or entry.get("where") not in _WHERE
            or not isinstance(entry.get("node"), str)
            or not isinstance(entry.get("sha256"), (str, type(None)))
        ):
            raise ProtocolError(f"mesh_models(): malformed entry {index}: {entry!r:.200}")
        info = ModelInfo.from_wire(entry) if entry["where"] == "here" else None
        locations.append(
            ModelLocation(entry["name"], entry["sha256"], entry["where"], entry["node"], info)
        )
    gateway = reply.get("gateway")
    if isinstance(gateway, dict):
        url, error = gateway.get("url"), gateway.get("error")
        return MeshModels(
            locations,
            gateway=url if isinstance(url, str) else None,
            gateway_error=error if isinstance(error, str) else None,
        )
    return MeshModels(locations)


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
    escalation = reply.get("escalation")
    if escalation is not None and not isinstance(escalation, dict):
        raise ProtocolError("the node's infer reply has an 'escalation' that is not a map")
    return Inference(
        outputs, ran_on=reply["ran_on"], node=node, request_id=request_id, escalation=escalation
    )


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
