"""Who may use an HTTP port: bearer tokens, and TLS contexts for both ends.

Used by :mod:`mesh.http.server` (a node's ``--http-port`` and ``edgemesh
gateway``) and by the node's gateway client (:mod:`mesh.gateway.client`).

- With a token set, every request must carry ``Authorization: Bearer
  <token>``; otherwise it is answered 401 with ``WWW-Authenticate: Bearer``
  (RFC 6750) and a typed body (``"code": "AuthError"``), before routing, so
  an unauthenticated caller cannot even tell which routes or models exist.
  The one exception is ``GET /v2/health/live``: it says only that the
  process answers HTTP, and liveness probes (a supervisor, a load
  balancer) commonly carry no credentials. Readiness is not exempt: a
  node's gateway client probes it with its token, so a wrong token shows
  up as a failed probe and an open breaker that says why.
- Tokens are compared with :func:`hmac.compare_digest`, in constant time.
- TLS uses :func:`ssl.create_default_context` (modern ciphers, no
  compression) with TLS 1.2 as the floor.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from mesh.core.wire import oip
from mesh.errors import AuthError, ConfigError

__all__ = [
    "OPEN_PATHS",
    "bearer_middleware",
    "client_tls_context",
    "server_tls_context",
]

OPEN_PATHS = frozenset({"/v2/health/live"})
"""Paths answered without a token (GET only)."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REALM = 'Bearer realm="edgemesh"'


def bearer_middleware(token: str) -> Middleware:
    """An aiohttp middleware that lets through only requests carrying ``token``."""
    expected = token.encode("ascii")

    @web.middleware
    async def check_bearer(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and request.path in OPEN_PATHS:
            return await handler(request)
        given = _bearer_of(request.headers.get("Authorization", ""))
        if given is None:
            return _unauthorized(
                "this server needs a bearer token: send the header 'Authorization: Bearer <token>'",
                _REALM,
            )
        if not hmac.compare_digest(given, expected):
            return _unauthorized(
                "the bearer token was not accepted",
                _REALM + ', error="invalid_token"',
            )
        return await handler(request)

    return check_bearer


def _bearer_of(header: str) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header; None without one."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    # Bytes, so that compare_digest takes any header (it refuses non-ASCII str).
    return value.strip().encode("utf-8", errors="surrogateescape")


def _unauthorized(message: str, challenge: str) -> web.Response:
    response = web.Response(
        status=401,
        body=oip.error_body(message, AuthError.code),
        content_type="application/json",
    )
    response.headers["WWW-Authenticate"] = challenge
    return response


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context serving ``cert`` (PEM chain) with ``key``; ConfigError if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"tls_cert {cert} and tls_key {key} cannot be used as a PEM certificate chain "
            f"and its private key: {_reason(exc)}"
        ) from None
    return context


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client-side context that verifies the server (and its name) against
    ``ca_file``, or the system's CAs when None; ConfigError if unusable."""
    try:
        context = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"ca_file {ca_file} holds no usable PEM certificate: {_reason(exc)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
