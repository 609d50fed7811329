"""The single error tree of edgemesh.

Every failure a caller can see is a :class:`MeshError`. Third-party errors
(OSError, onnxruntime, msgpack, aiohttp) are mapped onto this tree at the
boundary where they happen, so callers only ever need ``except MeshError``::

    MeshError
    ├── ConfigError
    │   ├── AddressInUse           a port to listen on is taken (exit status 3)
    │   ├── AddressUnavailable     an address (--host, --interface) this machine lacks (4)
    │   └── NameTaken              another node on the network has this node's name (5)
    ├── ProtocolError              the peer broke the wire contract
    │   ├── BadRequest             a well-formed message with bad parameters
    │   ├── MethodNotFound         no such RPC method
    │   └── MessageTooLarge        a message over the configured size limit
    ├── TransportError
    │   ├── PeerUnavailable        cannot connect, or the connection was lost
    │   │   └── Draining           the node is shutting down: ask another node
    │   └── RpcTimeout             no answer within the call's timeout
    ├── RemoteError                the peer sent an error code we do not know
    ├── ModelError
    │   ├── ModelNotFound
    │   ├── ModelIntegrityError    a model file does not match its manifest
    │   ├── ModelTransferFailed    no peer delivered a verified copy of a model
    │   ├── InvalidInput           inputs do not match the model's signature
    │   └── InferenceFailed        the runtime failed on valid inputs
    ├── Overloaded                 no capacity now (too many in flight, ...)
    ├── DeadlineExceeded           the request's deadline passed before an answer
    ├── AuthError                  mesh-key handshake missing or failed
    │   └── Forbidden              authenticated, but this role may not do that
    └── InternalError              a bug on the answering side (logged there)

On the wire an error is ``[code, message]`` where ``code`` is the class's
:attr:`MeshError.code` (``"InvalidInput"``, ...). :func:`error_from_wire`
turns such a pair back into the matching exception class.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AddressInUse",
    "AddressUnavailable",
    "AuthError",
    "BadRequest",
    "ConfigError",
    "DeadlineExceeded",
    "Draining",
    "Forbidden",
    "InferenceFailed",
    "InternalError",
    "InvalidInput",
    "MeshError",
    "MessageTooLarge",
    "MethodNotFound",
    "ModelError",
    "ModelIntegrityError",
    "ModelNotFound",
    "ModelTransferFailed",
    "NameTaken",
    "Overloaded",
    "PeerUnavailable",
    "ProtocolError",
    "RemoteError",
    "RpcTimeout",
    "TransportError",
    "error_from_wire",
]


class MeshError(Exception):
    """Base of every error edgemesh raises on purpose."""

    code: ClassVar[str] = "MeshError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> list[str]:
        """The msgpack-RPC error object: ``[code, message]``."""
        return [self.code, self.message]


class ConfigError(MeshError):
    """A configuration value is missing, malformed or inconsistent."""

    code = "ConfigError"


class AddressInUse(ConfigError):
    """A port this process should listen on is held by another (the message names the flag)."""

    code = "AddressInUse"


class AddressUnavailable(ConfigError):
    """An address to listen or announce on is not one of this machine's, or does not resolve."""

    code = "AddressUnavailable"


class NameTaken(ConfigError):
    """Another node on the network already answers for this node's name."""

    code = "NameTaken"


class ProtocolError(MeshError):
    """The peer sent something that breaks the wire contract."""

    code = "ProtocolError"


class BadRequest(ProtocolError):
    """A well-formed RPC message whose parameters are wrong."""

    code = "BadRequest"


class MethodNotFound(ProtocolError):
    """The RPC method does not exist on this server."""

    code = "MethodNotFound"


class MessageTooLarge(ProtocolError):
    """A message is larger than the configured limit."""

    code = "MessageTooLarge"


class TransportError(MeshError):
    """The connection could not carry the call."""

    code = "TransportError"


class PeerUnavailable(TransportError):
    """The peer cannot be reached, or the connection to it was lost."""

    code = "PeerUnavailable"


class Draining(PeerUnavailable):
    """The node is draining (shutting down): it takes no new request, or it gave up
    on one it had taken when its drain timeout passed.

    A :class:`PeerUnavailable` on purpose: the request was not served and may
    be sent to another node under the same request id, which is what every
    client that fails over on PeerUnavailable (the SDK among them) already does.
    """

    code = "Draining"


class RpcTimeout(TransportError):
    """No answer arrived within the call's timeout."""

    code = "RpcTimeout"


class RemoteError(MeshError):
    """The peer answered with an error code this version does not know."""

    code = "RemoteError"

    def __init__(self, message: str, remote_code: str = "RemoteError") -> None:
        super().__init__(message)
        self.remote_code = remote_code

    def to_wire(self) -> list[str]:
        return [self.remote_code, self.message]


class ModelError(MeshError):
    """Something is wrong with a model or a request to it."""

    code = "ModelError"


class ModelNotFound(ModelError):
    """No model of that name is served here."""

    code = "ModelNotFound"


class ModelIntegrityError(ModelError):
    """A model file's checksum does not match its manifest entry."""

    code = "ModelIntegrityError"


class ModelTransferFailed(ModelError):
    """No holder delivered a copy of a model whose size and sha256 check out."""

    code = "ModelTransferFailed"


class InvalidInput(ModelError):
    """The inputs do not match the model's declared signature."""

    code = "InvalidInput"


class InferenceFailed(ModelError):
    """The runtime failed while running valid inputs."""

    code = "InferenceFailed"


class Overloaded(MeshError):
    """There is no capacity for the request right now."""

    code = "Overloaded"


class DeadlineExceeded(MeshError):
    """The request's deadline passed before it could be answered."""

    code = "DeadlineExceeded"


class AuthError(MeshError):
    """The mesh-key handshake was missing, failed, or did not match."""

    code = "AuthError"


class Forbidden(AuthError):
    """The caller is who it says, but its role (client or node) may not do this."""

    code = "Forbidden"


class InternalError(MeshError):
    """The answering side hit a bug; its log has the traceback."""

    code = "InternalError"


def _all_subclasses(cls: type[MeshError]) -> list[type[MeshError]]:
    found: list[type[MeshError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


# Annotated because mypy joins a class literal with a list of classes to object.
_ALL_ERRORS: list[type[MeshError]] = [MeshError, *_all_subclasses(MeshError)]
_BY_CODE: dict[str, type[MeshError]] = {
    sub.code: sub for sub in _ALL_ERRORS if sub is not RemoteError
}


def error_from_wire(error: object) -> MeshError:
    """Turn a msgpack-RPC error object into an exception.

    A well-formed error is ``[code, message]``. A known code gives its class;
    an unknown code, or an error of another shape (other msgpack-RPC servers
    send plain strings or maps), gives :class:`RemoteError` carrying what came.
    """
    if (
        isinstance(error, (list, tuple))
        and len(error) == 2
        and isinstance(error[0], str)
        and isinstance(error[1], str)
    ):
        code, message = error
        cls = _BY_CODE.get(code)
        if cls is None:
            return RemoteError(message, remote_code=code)
        return cls(message)
    return RemoteError(f"peer returned a non-standard error: {error!r}")
