"""Gateways for tests: in the test's event loop, as a real process, and a
misbehaving V2 server for the faults a real gateway never shows on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from mesh.config import GatewayServerConfig, HttpConfig, RuntimeConfig
from mesh.demo.processes import start_gateway_process
from mesh.gateway.server import Gateway
from mesh.runtime.runtime import Runtime
from tests.helpers import MODELS_DIR

__all__ = [
    "gateway_config",
    "gateway_runtime",
    "misbehaving_server",
    "running_gateway",
    "start_gateway",
]


def start_gateway(
    workdir: Path, *extra: str, name: str = "gw"
) -> tuple[subprocess.Popen[bytes], int]:
    """``edgemesh gateway`` on 127.0.0.1 with a free port, logging at info; it and its port.

    Its ready file is ``NAME.ready.json`` and its log ``NAME.log`` in ``workdir``.
    """
    return start_gateway_process(workdir, name=name, extra=extra, log_level="info")


def gateway_config(port: int = 0, **overrides: Any) -> GatewayServerConfig:
    settings: dict[str, Any] = {"host": "127.0.0.1", "http": HttpConfig(port=port)}
    settings.update(overrides)
    return GatewayServerConfig(**settings)


def gateway_runtime(*, concurrency: int = 2) -> Runtime:
    """A runtime of the bundled digits-small and digits-large, as a test gateway serves them.

    ``concurrency`` is both the per-model concurrency and the executor's thread
    count. The models load here; use it as a context manager
    (``with gateway_runtime() as runtime``) so its threads stop on exit.
    """
    return Runtime(
        RuntimeConfig(
            model_dirs=(MODELS_DIR,),
            model_names=("digits-small", "digits-large"),
            per_model_concurrency=concurrency,
            executor_threads=concurrency,
        )
    )


@contextlib.asynccontextmanager
async def running_gateway(
    config: GatewayServerConfig, runtime: Runtime | None = None
) -> AsyncIterator[Gateway]:
    gateway = Gateway(config, runtime)
    task = asyncio.create_task(gateway.run())
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()
    try:
        yield gateway
    finally:
        gateway.stop()
        await task


# A real gateway never sends garbage, hangs or fails with 500 on purpose, so
# these cases use a tiny aiohttp server on 127.0.0.1 that does exactly that.


@contextlib.asynccontextmanager
async def misbehaving_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"ready": 200}

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        model = request.match_info["model"]
        if model == "garbage":
            return web.Response(body=b"\x00not a v2 answer", content_type="application/json")
        if model == "hang":
            await asyncio.sleep(5)
        if model == "boom":
            return web.json_response({"error": "kaput"}, status=500)
        if model == "busy":
            return web.json_response({"error": "too busy"}, status=503)
        if model == "late":
            return web.json_response({"error": "too late", "code": "DeadlineExceeded"}, status=503)
        return web.json_response({"error": "what?"}, status=404)

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({}, status=state["ready"])

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        await runner.cleanup()
