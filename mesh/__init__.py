"""edgemesh: a peer-to-peer ONNX inference mesh for the devices you already own.

The public SDK::

    from mesh import MeshClient

    async with MeshClient(["10.0.0.5:7700", "10.0.0.6:7700"]) as client:
        outputs = await client.infer("digits-small", {"X": pixels})
        outputs["label"], outputs.ran_on

:meth:`MeshClient.discover` finds the nodes with mDNS instead. The client
uses the least loaded node and fails over to another when its node goes
away. :class:`Client` is the same for scripts and notebooks, without ``await``.
Every error raised on purpose is a :class:`MeshError`; see :mod:`mesh.errors`.
"""

import importlib
from typing import TYPE_CHECKING, Any

from mesh._version import __version__
from mesh.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    InferenceFailed,
    InternalError,
    InvalidInput,
    MeshError,
    MessageTooLarge,
    MethodNotFound,
    ModelError,
    ModelIntegrityError,
    ModelNotFound,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    RpcTimeout,
    TransportError,
)

if TYPE_CHECKING:  # the SDK is imported on first use; see __getattr__
    from mesh.sdk.client import (
        Inference,
        MeshClient,
        MeshModels,
        ModelInfo,
        ModelLocation,
        TensorInfo,
    )
    from mesh.sdk.sync import Client

# The SDK pulls in asyncio, sockets and zeroconf. Importing it lazily (PEP 562)
# keeps ``import mesh.core...`` and ``import mesh.errors`` free of all that.
_LAZY = {
    "Client": "mesh.sdk.sync",
    "Inference": "mesh.sdk.client",
    "MeshClient": "mesh.sdk.client",
    "MeshModels": "mesh.sdk.client",
    "ModelInfo": "mesh.sdk.client",
    "ModelLocation": "mesh.sdk.client",
    "TensorInfo": "mesh.sdk.client",
}


def __getattr__(name: str) -> Any:
    """Import an SDK name the first time it is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AuthError",
    "BadRequest",
    "Client",
    "ConfigError",
    "DeadlineExceeded",
    "Inference",
    "InferenceFailed",
    "InternalError",
    "InvalidInput",
    "MeshClient",
    "MeshError",
    "MeshModels",
    "MessageTooLarge",
    "MethodNotFound",
    "ModelError",
    "ModelInfo",
    "ModelIntegrityError",
    "ModelLocation",
    "ModelNotFound",
    "Overloaded",
    "PeerUnavailable",
    "ProtocolError",
    "RemoteError",
    "RpcTimeout",
    "TensorInfo",
    "TransportError",
    "__version__",
]
