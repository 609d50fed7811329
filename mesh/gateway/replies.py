"""What a V2 server's answers mean to the node's gateway client: the error each
HTTP status stands for, the message to quote, and the reason for a failed
exchange. The mapping is the HTTP side of the one error tree."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping

import aiohttp

from mesh.errors import (
    AuthError,
    DeadlineExceeded,
    InferenceFailed,
    InternalError,
    InvalidInput,
    MeshError,
    MessageTooLarge,
    ModelNotFound,
    Overloaded,
    RemoteError,
)

__all__ = [
    "Reply",
    "clip",
    "error_message",
    "has_binary_extension",
    "refused_reason",
    "status_error",
    "transport_reason",
]

# How much of an error body goes into a message when it has no "error" field.
_MAX_QUOTED_BODY = 200


class Reply:
    """What came back from the gateway: status, headers and the whole body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def transport_reason(exc: BaseException) -> str:
    """A short reason for a failed exchange, for messages and status pages."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was not accepted ({exc.certificate_error.args[-1]})"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed: {getattr(exc.os_error, 'reason', None) or exc.os_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect: {cause.strerror or cause}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the gateway closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad HTTP answer: {exc.message}"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def refused_reason(status: int) -> str:
    """Why a 401 or 403 came back: the server refused the token we send."""
    return f"refused our credentials (HTTP {status})"


def status_error(status: int, code: str | None, message: str) -> MeshError:
    """The MeshError a non-200 answer stands for; ``code`` is an edgemesh body's code."""
    if status == 503:
        # Alive and busy; an edgemesh gateway says whether it was the deadline.
        if code == DeadlineExceeded.code:
            return DeadlineExceeded(message)
        return Overloaded(message)
    if status == 500:
        if code == InternalError.code:
            return InternalError(message)
        return InferenceFailed(message)
    if status == 404:
        return ModelNotFound(message)
    if status in (400, 422):
        return InvalidInput(message)
    if status == 413:
        return MessageTooLarge(message)
    if status in (401, 403):
        return AuthError(message)
    return RemoteError(message, remote_code=f"HTTP{status}")


def error_message(reply: Reply) -> tuple[str, str | None]:
    """The ``"error"`` of a V2 error body and its edgemesh ``"code"``, if any;
    else a bit of whatever came."""
    text = reply.body.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError):
        obj = json.loads(text)
        if isinstance(obj, dict):
            code = obj.get("code")
            for key in ("error", "detail"):  # V2; FastAPI-based servers
                if isinstance(obj.get(key), str):
                    return str(obj[key]), code if isinstance(code, str) else None
    text = clip(" ".join(text.split()), _MAX_QUOTED_BODY)
    return f"HTTP {reply.status}" + (f": {text}" if text else ""), None


def has_binary_extension(body: bytes) -> bool:
    """Whether server metadata (``GET /v2``) lists Triton's binary tensor extension."""
    with contextlib.suppress(ValueError):
        metadata = json.loads(body)
        if isinstance(metadata, dict) and isinstance(metadata.get("extensions"), list):
            return "binary_tensor_data" in metadata["extensions"]
    return False


def clip(text: str, length: int) -> str:
    """``text``, cut to ``length`` characters with an ellipsis when longer."""
    return text if len(text) <= length else text[:length] + "…"
