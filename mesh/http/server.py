"""The Open Inference Protocol (KServe V2 REST) over aiohttp.

A thin edge: it reads bodies, hands them to :mod:`mesh.core.wire.oip`, calls an
:class:`~mesh.service.InferenceService`, and writes what comes back.

Every error answers with a JSON body ``{"error": message, "code": code}``:
``message`` says what was wrong and what was expected, and ``code`` is the
:attr:`MeshError.code <mesh.errors.MeshError.code>` of the failure
(``"InvalidInput"``, ``"ModelNotFound"``, ...), so that a client can turn it
back into an exception with :func:`mesh.errors.error_from_wire`. Errors that
come from HTTP itself carry a code too: no such route (404) and a wrong
method (405) are ``"MethodNotFound"`` (the HTTP face of a missing RPC
method), a body over aiohttp's backstop is ``"MessageTooLarge"``, any other
4xx is ``"BadRequest"``; "not ready" (503) is ``"PeerUnavailable"``.

=====================================================  ======
Failure                                                Status
=====================================================  ======
BadRequest, InvalidInput, ProtocolError                400
AuthError, no or a wrong bearer token                  401
ModelNotFound, unknown route or model version          404
wrong method                                           405
MessageTooLarge, body over ``max_body_bytes``          413
Overloaded, PeerUnavailable, RpcTimeout,               503
DeadlineExceeded, service not ready
InferenceFailed, InternalError, any other MeshError    500
=====================================================  ======
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mesh.config import HttpConfig
from mesh.core.policy.escalation import parse_override
from mesh.core.policy.exposure import ByteBudget
from mesh.core.wire import catalog, oip
from mesh.core.wire.requests import InferRequest
from mesh.errors import (
    AuthError,
    BadRequest,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    MeshError,
    MessageTooLarge,
    MethodNotFound,
    ModelNotFound,
    Overloaded,
    PeerUnavailable,
    ProtocolError,
    RemoteError,
    TransportError,
)
from mesh.http.limits import BUDGET, check_json_size, held_bytes, read_body, runner_options
from mesh.http.security import bearer_middleware, server_tls_context
from mesh.service import Answer, InferenceService

__all__ = ["EXTENSIONS", "HEADER_LENGTH", "HttpServer", "make_app", "status_of"]

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary tensor extension's header: how many leading body bytes are JSON."""
EXTENSIONS = ("binary_tensor_data",)
"""Protocol extensions ``GET /v2`` advertises."""

_SERVICE: web.AppKey[InferenceService] = web.AppKey("service", InferenceService)
_CONFIG: web.AppKey[HttpConfig] = web.AppKey("config", HttpConfig)
_JSON = "application/json"
_BINARY = "application/octet-stream"
# How long a stopping server lets requests in flight finish.
_SHUTDOWN_GRACE_S = 5.0
_DIGITS = re.compile(r"[0-9]{1,18}")

# Most specific first: MessageTooLarge is a ProtocolError.
_STATUS: tuple[tuple[type[MeshError] | tuple[type[MeshError], ...], int], ...] = (
    (MessageTooLarge, 413),
    (AuthError, 401),
    ((BadRequest, InvalidInput), 400),
    (ModelNotFound, 404),
    ((Overloaded, TransportError, DeadlineExceeded), 503),
    # Not the client's fault: a server behind this one (an upstream of the
    # gateway) broke the protocol or failed in a way we cannot name.
    ((ProtocolError, RemoteError), 502),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(error: MeshError) -> int:
    """The HTTP status that answers ``error``."""
    for classes, status in _STATUS:
        if isinstance(error, classes):
            return status
    return 500


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    return web.Response(status=status, body=oip.error_body(message, code), content_type=_JSON)


def _json(obj: object, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with the JSON error form; the one catch-all is here."""
    try:
        return await handler(request)
    except MeshError as exc:
        return _error(status_of(exc), exc.message, exc.code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, _http_message(request, exc), _http_code(exc))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        # A bug: the traceback goes to the log, never to the client.
        log.exception("bug while answering %s %s", request.method, request.path)
        return _error(500, "internal error", "InternalError")


def _http_code(exc: web.HTTPException) -> str:
    """The MeshError code of an error aiohttp raised itself (routing, limits)."""
    if isinstance(exc, (web.HTTPNotFound, web.HTTPMethodNotAllowed)):
        return MethodNotFound.code
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return MessageTooLarge.code
    if exc.status < 500:
        return BadRequest.code
    return InternalError.code


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"no route for {request.method} {request.path}; the API lives under /v2"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"method {request.method} is not allowed on {request.path}; allowed: {allowed}"
    return exc.reason


# --- health and metadata -----------------------------------------------------------


def _not_ready() -> web.Response:
    return _error(503, "the server is not ready to serve requests", PeerUnavailable.code)


async def _live(request: web.Request) -> web.Response:
    return _json({"live": True})


async def _ready(request: web.Request) -> web.Response:
    if not request.app[_SERVICE].ready():
        return _not_ready()
    return _json({"ready": True})


async def _server_metadata(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    return _json(
        {
            "name": service.server_name,
            "version": service.server_version,
            "extensions": list(EXTENSIONS),
        }
    )


async def _metadata_of(request: web.Request) -> dict[str, Any]:
    """The model's metadata, checking the URL's version if it names one."""
    name = request.match_info["model"]
    metadata = await request.app[_SERVICE].model_metadata(name)
    version = request.match_info.get("version")
    versions = metadata.get("versions") or []
    if version is not None and version not in versions:
        have = ", ".join(f"'{v}'" for v in versions) or "none"
        raise ModelNotFound(f"model '{name}' has no version '{version}'; versions: {have}")
    return metadata


async def _model_metadata(request: web.Request) -> web.Response:
    return _json(await _metadata_of(request))


async def _model_ready(request: web.Request) -> web.Response:
    if not request.app[_SERVICE].ready():
        return _not_ready()
    metadata = await _metadata_of(request)
    return _json({"name": metadata["name"], "ready": True})


async def _repository_index(request: web.Request) -> web.Response:
    """The repository extension's index: the models served here, each READY.

    ``{"ready": true}`` asks for ready models only; every model listed is
    ready, so both answer the same.
    """
    body = await _read_body(request)
    catalog.parse_index_request(body)
    entries = await request.app[_SERVICE].repository_index()
    return _json(catalog.index_entries(entries))


# --- inference ---------------------------------------------------------------------


async def _infer(request: web.Request) -> web.Response:
    service = request.app[_SERVICE]
    model = request.match_info["model"]
    version = request.match_info.get("version")
    header_length = _header_length(request)
    body = await _read_body(request, header_length)
    parsed = oip.parse_infer_request(body, header_length)
    if version is not None:
        await _metadata_of(request)
    answer = await service.infer(
        InferRequest(
            model=model,
            inputs=parsed.inputs,
            request_id=parsed.id,
            deadline_ms=parsed.deadline_ms,
            version=version,
            escalation=parse_override(
                parsed.parameters.get("escalate"),
                parsed.parameters.get("escalate_threshold"),
                "the request's parameters",
            ),
        )
    )
    outputs = _selected_outputs(parsed, answer)
    payload, json_length = oip.encode_infer_response(
        model=model,
        version=version,
        request_id=parsed.id,
        outputs=outputs,
        binary=parsed.binary_outputs(outputs),
        # Joint inference's fields (escalated, ...) are scalars, as V2 parameters must be.
        parameters={"ran_on": answer.ran_on, **(answer.escalation or {})},
    )
    if json_length is None:
        return web.Response(body=payload, content_type=_JSON)
    response = web.Response(body=payload, content_type=_BINARY)
    response.headers[HEADER_LENGTH] = str(json_length)
    return response


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not _DIGITS.fullmatch(raw.strip()):
        raise BadRequest(f"{HEADER_LENGTH} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


async def _read_body(request: web.Request, header_length: int | None = None) -> bytes:
    """The whole body, within the limits of :mod:`mesh.http.limits`; its JSON part
    (the first ``header_length`` bytes, else all of it) within ``max_json_bytes``."""
    config = request.app[_CONFIG]
    if header_length is None and request.content_length is not None:
        check_json_size(request.content_length, config, declared=True)
    limit = config.max_body_bytes if header_length is not None else config.max_json_bytes
    body = await read_body(request, min(limit, config.max_body_bytes), config)
    check_json_size(len(body) if header_length is None else header_length, config, declared=False)
    return body


def _selected_outputs(parsed: oip.V2Request, answer: Answer) -> dict[str, Any]:
    """The outputs the client asked for, in its order; all of them if it did not say."""
    if parsed.outputs is None:
        return dict(answer.outputs)
    unknown = [o.name for o in parsed.outputs if o.name not in answer.outputs]
    if unknown:
        available = ", ".join(f"'{n}'" for n in answer.outputs) or "none"
        raise BadRequest(
            f"unknown output(s) {', '.join(repr(n) for n in unknown)}; available: {available}"
        )
    return {o.name: answer.outputs[o.name] for o in parsed.outputs}


# --- the application and its server ---------------------------------------------------


def make_app(
    service: InferenceService, config: HttpConfig, budget: ByteBudget | None = None
) -> web.Application:
    """The aiohttp application serving ``service`` under ``/v2``; request bodies
    count against ``budget`` (the node shares its RPC server's), else a budget of its own."""
    # Bodies are read by _read_body with its own limit and message; this is a backstop.
    # With a token, the check comes first: an unauthenticated caller reaches no route.
    checks = [] if config.token is None else [bearer_middleware(config.token)]
    app = web.Application(
        middlewares=[*checks, held_bytes, _errors], client_max_size=config.max_body_bytes + 1
    )
    app[_SERVICE] = service
    app[_CONFIG] = config
    app[BUDGET] = budget or ByteBudget(config.max_bytes_in_flight)
    model = "/v2/models/{model}"
    versioned = model + "/versions/{version}"
    app.router.add_get("/v2/health/live", _live)
    app.router.add_get("/v2/health/ready", _ready)
    app.router.add_get("/v2", _server_metadata)
    app.router.add_post("/v2/repository/index", _repository_index)
    for base in (model, versioned):
        app.router.add_get(base, _model_metadata)
        app.router.add_get(base + "/ready", _model_ready)
        app.router.add_post(base + "/infer", _infer)
    return app


class HttpServer:
    """Serves :func:`make_app` on ``host`` and ``config.port`` until cancelled."""

    def __init__(
        self,
        service: InferenceService,
        *,
        host: str,
        config: HttpConfig,
        sock: socket.socket | None = None,
        budget: ByteBudget | None = None,
    ) -> None:
        self._app = make_app(service, config, budget)
        self._host = host
        self._config = config
        # Made here, so that an unusable certificate fails the start, not the first request.
        self._tls = None
        if config.tls_cert is not None and config.tls_key is not None:
            self._tls = server_tls_context(config.tls_cert, config.tls_key)
        # Bound already (see mesh.listening): then host and port only name it.
        self._sock = sock
        self._bound_port: int | None = None

    @property
    def bound_port(self) -> int | None:
        """The port listened on (useful with port 0), None when not serving."""
        return self._bound_port

    async def serve(self, listening: asyncio.Event | None = None) -> None:
        """Listen, set ``listening``, and serve until cancelled; always closes the socket."""
        # handler_cancellation: a client that goes away cancels its handler,
        # and so the inference it was waiting for.
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_GRACE_S,
            **runner_options(self._config),
        )
        await runner.setup()
        try:
            site: web.BaseSite
            config, tls = self._config, self._tls
            if self._sock is not None:
                site = web.SockSite(runner, self._sock, ssl_context=tls)
            else:
                site = web.TCPSite(runner, self._host, config.port or 0, ssl_context=tls)
            await site.start()
            self._bound_port = _port_of(runner)
            log.info(
                "Open Inference Protocol on %s://%s:%s/v2%s",
                "http" if tls is None else "https",
                self._host,
                self._bound_port,
                "" if config.token is None else " (bearer token required)",
            )
            if listening is not None:
                listening.set()
            await asyncio.Future()  # until cancelled
        finally:
            self._bound_port = None
            await runner.cleanup()


def _port_of(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    port = address[1]
    if not isinstance(port, int):
        raise InternalError(f"unexpected listening address {address!r}")
    return port
