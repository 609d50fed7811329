"""The onnxruntime edge as the node and the gateway use it: :class:`Runtime`.

It composes the two halves: :mod:`mesh.runtime.loading` finds, verifies and
opens the models once, at start-up, and :mod:`mesh.runtime.executor` runs
their calls on a shared thread pool, never on the event loop. Loading is
synchronous (call ``Runtime(config)`` from a thread with
:func:`asyncio.to_thread` if the loop is already running).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from numpy.typing import NDArray

from mesh.config import RuntimeConfig
from mesh.core.models.signatures import ModelSpec, validate_inputs
from mesh.core.wire.tensors import Tensors
from mesh.errors import ModelNotFound
from mesh.runtime.executor import Call, Executor, ModelLoad
from mesh.runtime.loading import (
    UNLISTED_VERSION,
    LoadedModel,
    check_runtime_config,
    load_models,
)
from mesh.runtime.model_files import MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "UNLISTED_VERSION", "ModelLoad", "Runtime", "RuntimeCall", "Tensors"]

# A queued or running call, as Runtime.start returns it.
RuntimeCall = Call


class Runtime:
    """Serves the ONNX models of ``config.model_dirs``.

    Use as a context manager (sync or async), or call :meth:`close` /
    :meth:`aclose`. Calls may come from any event loop; each result goes back
    to the loop that made the call.
    """

    def __init__(self, config: RuntimeConfig) -> None:
        """Find, verify and load the models; raises ConfigError or ModelError."""
        check_runtime_config(config)
        self._config = config
        self._models: dict[str, LoadedModel] = load_models(config)
        # Created last so a failed load leaves no threads behind.
        self._executor = Executor(
            self._models,
            threads=config.executor_threads,
            per_model=config.per_model_concurrency,
        )

    # --- registry -----------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the models served, sorted."""
        return tuple(sorted(self._models))

    def specs(self) -> list[ModelSpec]:
        """Specs of the models served, sorted by name."""
        return [self._models[n].spec for n in self.names]

    def spec(self, name: str) -> ModelSpec:
        """The spec of one model; ModelNotFound if it is not served here."""
        return self._get(name).spec

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def _get(self, name: str) -> LoadedModel:
        loaded = self._models.get(name)
        if loaded is None:
            available = ", ".join(f"'{n}'" for n in self.names) or "none"
            raise ModelNotFound(f"model '{name}' is not served here; available models: {available}")
        return loaded

    @property
    def threads(self) -> int:
        """Worker threads shared by all models."""
        return self._config.executor_threads

    # --- inference ----------------------------------------------------------

    def check_inputs(self, model: str, inputs: Mapping[str, NDArray[Any]]) -> None:
        """ModelNotFound or InvalidInput unless ``inputs`` suit ``model``."""
        validate_inputs(self._get(model).spec, inputs)

    async def infer(self, model: str, inputs: Mapping[str, NDArray[Any]]) -> Tensors:
        """Run one call of ``model`` on a worker thread; outputs keyed by name.

        Raises ModelNotFound, InvalidInput or InferenceFailed.

        Cancelling the awaiting task (a deadline, a client gone) drops a call
        still queued for a thread. A call already running cannot be stopped
        mid-kernel: it is asked to terminate at onnxruntime's next kernel
        boundary, and its result is discarded. The model's concurrency slot
        is freed only when the thread is done, so the limit counts real work.
        """
        call = self.start(model, inputs)
        try:
            return await call.future
        except asyncio.CancelledError:
            self.cancel(call)
            raise

    def start(self, model: str, inputs: Mapping[str, NDArray[Any]]) -> RuntimeCall:
        """Queue one call of ``model`` and return at once; its ``future`` has the outputs.

        For callers that would rather add a done-callback than keep a task
        waiting (the node runs every job this way). Cancel with :meth:`cancel`,
        not by cancelling the future. Raises as :meth:`infer` does.
        """
        validate_inputs(self._get(model).spec, inputs)
        # A snapshot of the mapping: the caller may reuse it while the thread runs.
        return self._executor.start(model, dict(inputs))

    def cancel(self, call: RuntimeCall) -> None:
        """Drop ``call`` if still queued, else ask its run to stop; its result is discarded."""
        self._executor.cancel(call)

    def load(self) -> list[ModelLoad]:
        """How busy each model is now: queued and executing calls, service-time average."""
        return self._executor.load()

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Refuse new calls, fail queued ones and wait for running ones. Idempotent.

        A call still waiting for a thread fails with InferenceFailed; one
        already running finishes, and its caller gets its result.
        """
        self._executor.shutdown()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        # Refused here, on the loop, so no call slips in while the thread starts.
        self._executor.refuse_calls()
        await asyncio.to_thread(self._executor.shutdown)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
