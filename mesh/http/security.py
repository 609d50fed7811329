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
- TLS contexts come from :mod:`mesh.config.credentials` (re-exported
  here), which also checks the files when settings load.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from mesh.config.credentials import client_tls_context, server_tls_context
from mesh.core.wire import oip
from mesh.errors import AuthError

__all__ = [
    "OPEN_PATHS",
    "bearer_middleware",
    "client_tls_context",
    "server_tls_context",
]

OPEN_PATHS = frozenset({"/v2/health/live"})
"""Routes answered without a token (GET and HEAD only)."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REALM = 'Bearer realm="edgemesh"'


def bearer_middleware(token: str) -> Middleware:
    """An aiohttp middleware that lets through only requests carrying ``token``."""
    expected = token.encode("ascii")

    @web.middleware
    async def check_bearer(request: web.Request, handler: _Handler) -> web.StreamResponse:
        # By the route matched, not the path as sent: nothing that reaches
        # another handler (an encoded slash, a trailing one) counts as open.
        resource = request.match_info.route.resource
        if (
            request.method in ("GET", "HEAD")
            and resource is not None
            and resource.canonical in OPEN_PATHS
        ):
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
    # The body (up to the size limit) is never read for a stranger: the
    # connection closes after the answer instead of draining it.
    response.force_close()
    return response
