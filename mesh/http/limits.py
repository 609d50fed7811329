"""What one HTTP request may cost: time to arrive, bytes held, and JSON parsed.

A request body is read within ``body_timeout_s`` (a Content-Length larger
than what is sent, or a chunk size of ``ffffffffffff``, fails with 408 and
the connection is closed, instead of waiting forever) and only while the
server's :class:`~mesh.core.policy.exposure.ByteBudget` has room for it (else
503 ``Overloaded``); the bytes stay counted until the request is answered.

JSON is parsed on the event loop, and a parser holds the interpreter for the
whole document (a thread would not let the loop run either), so the JSON part
of a request is kept to ``max_json_bytes``: past it, 413 with a pointer to
the binary tensor extension, whose tensor bytes are not parsed at all. That
keeps any single request from stalling gossip long enough for peers to
suspect the node.

Connections that send no complete request headers within ``idle_timeout_s``
(slow headers, or idle keep-alive) are closed by aiohttp's keep-alive timer,
which :func:`runner_options` sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mesh.config import HttpConfig
from mesh.core.policy.exposure import ByteBudget
from mesh.errors import MessageTooLarge, Overloaded

__all__ = [
    "BUDGET",
    "HELD",
    "check_json_size",
    "held_bytes",
    "read_body",
    "release_held",
    "runner_options",
]

BUDGET: web.AppKey[ByteBudget] = web.AppKey("budget", ByteBudget)
# Bytes of this request counted in the budget (released once it is answered).
HELD: web.RequestKey[int] = web.RequestKey("held_bytes", int)
_CHUNK = 256 * 1024


# After answering a request whose body was not read to its end (refused, or
# still arriving), the rest is read and dropped this long before the
# connection closes, so that the client reads the answer instead of a reset.
_LINGER_S = 2.0


def runner_options(config: HttpConfig) -> dict[str, Any]:
    """The AppRunner settings that bound a connection's time without a request,
    and after a request whose body was not read."""
    return {
        "keepalive_timeout": config.idle_timeout_s,
        "lingering_time": min(_LINGER_S, config.body_timeout_s),
    }


def check_json_size(size: int, config: HttpConfig, *, declared: bool) -> None:
    """Refuse a JSON part bigger than ``max_json_bytes`` with MessageTooLarge (413)."""
    limit = config.max_json_bytes
    if size > limit:
        said = "declares" if declared else "has"
        raise MessageTooLarge(
            f"the request {said} {size} bytes of JSON, over the limit of {limit} for JSON; "
            "send large tensors with the binary tensor extension "
            "(Inference-Header-Content-Length)"
        )


async def read_body(request: web.Request, limit: int, config: HttpConfig) -> bytes:
    """The whole body: MessageTooLarge past ``limit``, Overloaded past the server's
    byte budget, 408 (and the connection closed) if it does not arrive in time."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise MessageTooLarge(
            f"request body of {declared} bytes is over the limit of {limit} bytes"
        )
    budget = request.app.get(BUDGET)
    if declared and budget is not None:
        _hold(request, budget, declared)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(config.body_timeout_s):
            async for chunk in request.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > limit:
                    # A chunked body has no declared length: say what we know.
                    raise MessageTooLarge(
                        f"request body of more than {limit} bytes is over the limit of "
                        f"{limit} bytes"
                    )
                if declared is None and budget is not None:
                    _hold(request, budget, len(chunk))
                chunks.append(chunk)
    except TimeoutError:
        # What is left of the body may never come; aiohttp closes the
        # connection after this answer (and a short linger), since its
        # next request could not be found.
        raise web.HTTPRequestTimeout(
            reason=f"the request body did not arrive within {config.body_timeout_s:g} s"
        ) from None
    return b"".join(chunks)


def _hold(request: web.Request, budget: ByteBudget, size: int) -> None:
    if not budget.take(size):
        raise Overloaded(budget.refusal(size))
    request[HELD] = request.get(HELD, 0) + size


def release_held(request: web.Request) -> None:
    """Give the budget back what this request held (once it is answered)."""
    held = request.get(HELD, 0)
    budget = request.app.get(BUDGET)
    if held and budget is not None:
        request[HELD] = 0
        budget.give_back(held)


@web.middleware
async def held_bytes(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """Give back the budget a request's body held once the request is answered."""
    try:
        return await handler(request)
    finally:
        release_held(request)
