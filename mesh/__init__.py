"""edgemesh: a peer-to-peer ONNX inference mesh for the devices you already own.

The public SDK::

    from mesh import MeshClient

    async with MeshClient("127.0.0.1:7700") as client:
        outputs = await client.infer("digits-small", {"X": pixels})

:class:`Client` is the same for scripts and notebooks, without ``await``.
Every error raised on purpose is a :class:`MeshError`; see :mod:`mesh.errors`.
"""

from mesh._version import __version__
from mesh.client import Client, Inference, MeshClient, ModelInfo, TensorInfo
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
    "MessageTooLarge",
    "MethodNotFound",
    "ModelError",
    "ModelInfo",
    "ModelIntegrityError",
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
