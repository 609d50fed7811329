"""What an inference front end needs from whatever answers it.

The HTTP API (:mod:`mesh.http.server`) serves the Open Inference Protocol on
top of an :class:`InferenceService`. A node implements it by sending each
request through its scheduler (the mesh, then the gateway); the gateway
implements it with onnxruntime or by forwarding to an upstream V2 server.
The front end never needs to know which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from mesh._version import __version__
from mesh.core.wire.catalog import IndexEntry
from mesh.core.wire.requests import InferRequest
from mesh.core.wire.tensors import Tensors

__all__ = ["SERVER_NAME", "Answer", "EdgemeshServer", "InferenceService"]

# What every edgemesh endpoint calls itself in ``GET /v2``.
SERVER_NAME = "edgemesh"


@dataclass(frozen=True, slots=True)
class Answer:
    """What a request produced, and where it ran (a node's name, or ``"gateway"``).

    ``escalation`` is set for a model with an escalation rule: the flat
    answer fields of :mod:`mesh.node.escalation` (``escalated``, ...).
    """

    outputs: Tensors
    ran_on: str
    escalation: Mapping[str, Any] | None = None


class InferenceService(Protocol):
    """The serving side of an Open Inference Protocol endpoint."""

    @property
    def server_name(self) -> str:
        """Reported by ``GET /v2`` (``"edgemesh"``)."""
        ...

    @property
    def server_version(self) -> str: ...

    def ready(self) -> bool:
        """Whether requests can be served now (``/v2/health/ready``)."""
        ...

    async def model_metadata(self, name: str) -> dict[str, Any]:
        """The V2 metadata object of ``name`` (``{"name", "versions", "platform",
        "inputs", "outputs"}``); ModelNotFound when nothing here can serve it.

        A model is ready exactly when its metadata can be given.
        """
        ...

    async def infer(self, request: InferRequest) -> Answer:
        """Answer ``request`` or raise a MeshError saying why not."""
        ...

    async def repository_index(self) -> list[IndexEntry]:
        """The models served here now (``POST /v2/repository/index``).

        A MeshError when they cannot be listed (an upstream without the
        repository extension): then they are unknown, never "none".
        """
        ...


class EdgemeshServer:
    """The identity every edgemesh service reports, whatever answers behind it.

    A node, the gateway and a gateway forwarding upstream all say
    ``edgemesh`` and this version: to a client, the upstream is a detail.
    """

    @property
    def server_name(self) -> str:
        """``"edgemesh"``."""
        return SERVER_NAME

    @property
    def server_version(self) -> str:
        """This edgemesh's version."""
        return __version__
