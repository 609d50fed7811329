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

from mesh._version import __version__
from mesh.client import Inference, MeshClient, ModelInfo, TensorInfo
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
from mesh.sync_client import Client

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
