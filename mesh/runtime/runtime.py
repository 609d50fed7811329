"""The onnxruntime edge as the node and the gateway use it: :class:`Runtime`.

It composes the two halves: :mod:`mesh.runtime.loading` finds, verifies and
opens the models (at start-up, and later as versions come and go), and
:mod:`mesh.runtime.executor` runs their calls on a shared thread pool,
never on the event loop. Loading is synchronous (call ``Runtime(config)``
from a thread with :func:`asyncio.to_thread` if the loop is already running).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

from numpy.typing import NDArray

from mesh.config import RuntimeConfig
from mesh.core.models.signatures import ModelSpec, validate_inputs
from mesh.core.models.versions import Version, choose_version, version_key
from mesh.core.wire.tensors import Tensors
from mesh.errors import ModelNotFound
from mesh.runtime.executor import Call, Executor, LaneKey, ModelLoad, lane_key
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
    """Serves the ONNX models of ``config.model_dirs``, each name in one or more versions.

    Use as a context manager (sync or async), or call :meth:`close` /
    :meth:`aclose`. Calls may come from any event loop; each result goes back
    to the loop that made the call.

    The set of versions can change while calls run (see
    :mod:`mesh.node.model_store`): :meth:`add` serves a new version,
    :meth:`retire` stops resolving one for new requests while calls already
    given its sha256 still run, and :meth:`free` drops it once nobody will.
    Change it from one event loop only.
    """

    def __init__(self, config: RuntimeConfig) -> None:
        """Find, verify and load the models; raises ConfigError or ModelError."""
        check_runtime_config(config)
        self._config = config
        models = load_models(config)
        # Every version that calls may still be given: serving or retiring.
        self._loaded: dict[LaneKey, LoadedModel] = {}
        # What new requests resolve to: name → version label → model.
        self._serving: dict[str, dict[str, LoadedModel]] = {}
        for model in models:
            self._index(model)
        # Created last so a failed load leaves no threads behind.
        self._executor = Executor(
            self._loaded.values(),
            threads=config.executor_threads,
            per_model=config.per_model_concurrency,
        )

    def _index(self, model: LoadedModel) -> LoadedModel | None:
        """Put ``model`` in the indexes; the model it displaces (same name and version), if any."""
        spec = model.spec
        self._loaded[lane_key(model)] = model
        versions = self._serving.setdefault(spec.name, {})
        old = versions.get(spec.version)
        versions[spec.version] = model
        return None if old is None or lane_key(old) == lane_key(model) else old

    # --- registry -----------------------------------------------------------

    @property
    def config(self) -> RuntimeConfig:
        """The settings the runtime was made with (model directories, threads)."""
        return self._config

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the models served, sorted."""
        return tuple(sorted(self._serving))

    def specs(self) -> list[ModelSpec]:
        """Specs of every version served, by name, oldest version first."""
        return [spec for name in self.names for spec in self.versions(name)]

    def versions(self, name: str) -> list[ModelSpec]:
        """Specs of the versions of ``name`` served, oldest first (none: empty)."""
        versions = self._serving.get(name, {})
        return [versions[v].spec for v in sorted(versions, key=version_key)]

    def spec(self, name: str, version: str | None = None) -> ModelSpec:
        """The spec a request for ``name`` (pinned to ``version``, else the newest) gets.

        ModelNotFound names the models, or the versions, that are served.
        """
        return self._resolve(name, version).spec

    def __contains__(self, name: object) -> bool:
        return name in self._serving

    def serving(self) -> list[LoadedModel]:
        """Every version served, each as loaded (two labels of one file: two entries)."""
        return [m for versions in self._serving.values() for m in versions.values()]

    def retired(self) -> list[ModelSpec]:
        """Versions retired but not yet freed: they run what they were given, nothing new."""
        serving = {lane_key(m) for v in self._serving.values() for m in v.values()}
        return [m.spec for key, m in self._loaded.items() if key not in serving]

    def loaded(self, sha256: str) -> LoadedModel | None:
        """The version with this sha256, serving or retiring, if this runtime has it."""
        for key, model in self._loaded.items():
            if key[1] == sha256:
                return model
        return None

    def _resolve(self, name: str, version: str | None) -> LoadedModel:
        versions = self._serving.get(name)
        if not versions:
            available = ", ".join(f"'{n}'" for n in self.names) or "none"
            raise ModelNotFound(f"model '{name}' is not served here; available models: {available}")
        chosen = choose_version(
            name, (Version(label, m.spec.sha256) for label, m in versions.items()), version
        )
        return versions[chosen.label]

    def _get(self, name: str, sha256: str | None) -> LoadedModel:
        """The version a call runs: the one with ``sha256``, else the newest of ``name``."""
        if sha256 is None:
            return self._resolve(name, None)
        loaded = self._loaded.get((name, sha256))
        if loaded is None:
            raise ModelNotFound(
                f"model '{name}' with sha256 {sha256[:12]} is not served here;"
                f" versions served: {self._labels(name)}"
            )
        return loaded

    def _labels(self, name: str) -> str:
        labels = [f"'{s.version}' (sha256 {s.sha256[:12]})" for s in self.versions(name)]
        return ", ".join(labels) or "none"

    # --- changing what is served ----------------------------------------------

    def add(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` (loaded with :func:`~mesh.runtime.loading.load_file`).

        Returns the version it displaces (same name and label, other sha256),
        which is retired: the caller frees it (:meth:`free`) once no call
        will be given it.
        """
        self._executor.add(model)
        return self._index(model)

    def retire(self, name: str, version: str) -> LoadedModel | None:
        """Stop resolving ``name`` version ``version`` for new requests; what it was, if served.

        Calls already given its sha256 still run: :meth:`free` it when none will be.
        """
        versions = self._serving.get(name)
        if versions is None or version not in versions:
            return None
        model = versions.pop(version)
        if not versions:
            del self._serving[name]
        return model

    def free(self, model: LoadedModel) -> None:
        """Drop a retired version: its session goes once its queued and running calls end.

        A no-op while another served label still uses the same file.
        """
        key = lane_key(model)
        if any(lane_key(m) == key for v in self._serving.values() for m in v.values()):
            return
        self._loaded.pop(key, None)
        self._executor.retire(key)

    @property
    def threads(self) -> int:
        """Worker threads shared by all models."""
        return self._config.executor_threads

    # --- inference ----------------------------------------------------------

    def check_inputs(
        self, model: str, inputs: Mapping[str, NDArray[Any]], sha256: str | None = None
    ) -> None:
        """ModelNotFound or InvalidInput unless ``inputs`` suit ``model`` (at ``sha256``)."""
        validate_inputs(self._get(model, sha256).spec, inputs)

    async def infer(
        self, model: str, inputs: Mapping[str, NDArray[Any]], *, version: str | None = None
    ) -> Tensors:
        """Run one call of ``model`` (``version``, else the newest) on a worker thread.

        Outputs are keyed by name.

        Raises ModelNotFound, InvalidInput or InferenceFailed.

        Cancelling the awaiting task (a deadline, a client gone) drops a call
        still queued for a thread. A call already running cannot be stopped
        mid-kernel: it is asked to terminate at onnxruntime's next kernel
        boundary, and its result is discarded. The model's concurrency slot
        is freed only when the thread is done, so the limit counts real work.
        """
        call = self.start(model, inputs, self._resolve(model, version).spec.sha256)
        try:
            return await call.future
        except asyncio.CancelledError:
            self.cancel(call)
            raise

    def start(
        self, model: str, inputs: Mapping[str, NDArray[Any]], sha256: str | None = None
    ) -> RuntimeCall:
        """Queue one call of ``model`` and return at once; its ``future`` has the outputs.

        ``sha256`` picks the version (one retired but not yet freed will do);
        None runs the newest.

        For callers that would rather add a done-callback than keep a task
        waiting (the node runs every job this way). Cancel with :meth:`cancel`,
        not by cancelling the future. Raises as :meth:`infer` does.
        """
        loaded = self._get(model, sha256)
        validate_inputs(loaded.spec, inputs)
        # A snapshot of the mapping: the caller may reuse it while the thread runs.
        return self._executor.start(lane_key(loaded), dict(inputs))

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
