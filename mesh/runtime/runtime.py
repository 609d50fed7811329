"""The onnxruntime edge: finds models on disk, checks them, and runs them off the event loop.

Loading is synchronous and happens once, at start-up (call ``Runtime(config)``
from a thread with :func:`asyncio.to_thread` if the loop is already running).
Each directory in ``RuntimeConfig.model_dirs`` may hold a ``manifest.toml``;
a model listed there must match its sha256 and declared signature or the
node refuses to start. Any other ``*.onnx`` file is a user's own model and is
served as it is, under its file stem; one that cannot be served is logged and
skipped so a single bad file does not take the node down.

Inference runs in one shared thread pool, never on the event loop. Each model
has a queue and a limit on how many calls of it run at once; a slot is held
until the worker thread finishes, not merely until the caller stops waiting.
A worker that finishes a call takes the next queued call of the same model
itself, and results go back to the loop in batches, so a busy model costs one
loop wakeup per batch of results rather than a round trip per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from mesh.config import RuntimeConfig
from mesh.core.models.signatures import (
    ManifestEntry,
    ModelSource,
    ModelSpec,
    TensorSpec,
    dtype_from_onnx,
    shape_from_onnx,
    signature_mismatch,
    validate_inputs,
)
from mesh.core.scheduling.estimates import ewma
from mesh.core.wire.tensors import Tensors
from mesh.errors import (
    ConfigError,
    InferenceFailed,
    InvalidInput,
    ModelError,
    ModelIntegrityError,
    ModelNotFound,
)
from mesh.runtime.model_files import (
    MANIFEST_NAME,
    ModelFile,
    find_model_files,
    read_model_bytes,
    select_model_files,
)

__all__ = ["MANIFEST_NAME", "UNLISTED_VERSION", "ModelLoad", "Runtime", "RuntimeCall", "Tensors"]

log = logging.getLogger(__name__)


# Version given to a model file that no manifest describes. "0" says "not
# released through a manifest"; its sha256 is what identifies it.
UNLISTED_VERSION = "0"
# Weight of the newest service time in the moving average: recent enough to
# follow a device that slows down (thermal throttling), smooth enough to
# ignore one slow call.


def _ort_errors(*names: str) -> tuple[type[Exception], ...]:
    # The pybind exception classes share no base class, and their set changes
    # between onnxruntime releases, so gather the ones this build has.
    found = (getattr(ort_state, n, None) for n in names)
    return tuple(e for e in found if isinstance(e, type) and issubclass(e, Exception))


# onnxruntime raises these for inputs it rejects that our own validation let
# through (e.g. a model-internal shape constraint).
_ORT_INPUT_ERRORS = _ort_errors("InvalidArgument")
# Everything else onnxruntime may raise; its Python layer also raises plain
# RuntimeError/TypeError/ValueError for malformed arguments.
_ORT_ERRORS: tuple[type[Exception], ...] = (
    *_ort_errors(
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
        "NotFound",
        "ModelLoadCanceled",
        "ModelRequiresCompilation",
        "DeviceReset",
    ),
    RuntimeError,
    TypeError,
    ValueError,
)


@dataclass(eq=False)
class _Loaded:
    """A model ready to run: its spec, its session, and its queue of calls.

    ``queue``, ``running`` and ``waiting`` belong to :class:`Runtime` and are
    guarded by its lock.
    """

    spec: ModelSpec
    session: Any  # ort.InferenceSession; untyped
    limit: int
    output_names: list[str] = field(default_factory=list)
    # Calls not yet taken by a worker, oldest first; cancelled ones stay here,
    # flagged, until a worker skips them (removing them would cost O(n) each).
    queue: deque[_Call] = field(default_factory=deque)
    # Workers of this model (at most ``limit``), whether running or still
    # waiting in the executor for a thread; they are what the limit counts.
    running: int = 0
    # Of those, the ones still waiting for a thread.
    waiting: int = 0
    # Calls executing on a thread right now.
    executing: int = 0
    # Moving average of one call's service time on this device, in seconds;
    # None until the first call. The mesh schedules by time, not queue length.
    service_ewma_s: float | None = None

    def run(self, feeds: Tensors, options: Any) -> Tensors:
        """Called on a worker thread. InferenceSession.run is thread-safe."""
        try:
            results = self.session.run(self.output_names, feeds, options)
        except _ORT_INPUT_ERRORS as exc:
            raise InvalidInput(
                f"model '{self.spec.name}' rejected its inputs: {_ort_message(exc)}"
            ) from exc
        except _ORT_ERRORS as exc:
            raise InferenceFailed(f"model '{self.spec.name}' failed: {_ort_message(exc)}") from exc
        out: Tensors = {}
        for name, value in zip(self.output_names, results, strict=True):
            if not isinstance(value, np.ndarray):
                raise InferenceFailed(
                    f"model '{self.spec.name}' returned a {type(value).__name__}"
                    f" for output '{name}', not a tensor"
                )
            out[name] = value
        return out


@dataclass(frozen=True)
class ModelLoad:
    """One model's load on this node, as :meth:`Runtime.load` reports it."""

    name: str
    queued: int  # calls waiting for a worker (cancelled ones may linger briefly)
    executing: int  # calls running on a thread now
    limit: int  # calls of this model that may run at once
    service_ewma_s: float | None  # average seconds per call; None before the first


@dataclass(eq=False, slots=True)
class _Call:
    """One call on its way from an event loop to a worker thread."""

    feeds: Tensors
    options: Any  # ort.RunOptions; untyped
    future: asyncio.Future[Tensors]
    inbox: _Inbox
    cancelled: bool = False  # guarded by Runtime._lock


# A queued or running call, as Runtime.start returns it.
RuntimeCall = _Call


class _Inbox:
    """Outcomes of calls on their way back from worker threads to one event loop.

    Waking a loop from another thread costs a syscall and a loop iteration, a
    large part of a small model's call. So a worker wakes the loop only when
    the inbox was empty; the results that arrive before the loop gets to them
    ride along with the same wakeup.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._outcomes: list[tuple[_Call, Tensors | BaseException]] = []
        # Set while a delivery is scheduled and has not yet taken the outcomes.
        # Taking them and clearing it happen under one lock, so every outcome
        # is either taken by the scheduled delivery or schedules the next one.
        self._scheduled = False

    def put(self, call: _Call, outcome: Tensors | BaseException) -> None:
        """Hand over one outcome; callable from any thread."""
        with self._lock:
            self._outcomes.append((call, outcome))
            if self._scheduled:
                return
            self._scheduled = True
        # A closed loop raises RuntimeError; nobody is left to take the outcome.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            outcomes, self._outcomes = self._outcomes, []
            self._scheduled = False
        for call, outcome in outcomes:
            future = call.future
            if future.done():  # cancelled: the caller stopped waiting
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


class Runtime:
    """Serves the ONNX models of ``config.model_dirs``.

    Use as a context manager (sync or async), or call :meth:`close` /
    :meth:`aclose`. Calls may come from any event loop; each result goes back
    to the loop that made the call.
    """

    def __init__(self, config: RuntimeConfig) -> None:
        """Find, verify and load the models; raises ConfigError or ModelError."""
        _check_config(config)
        self._config = config
        self._skipped: dict[str, str] = {}
        candidates = find_model_files(config.model_dirs)
        selected = select_model_files(candidates, config.model_names)
        self._models: dict[str, _Loaded] = {}
        for cand in selected:
            loaded = self._load(cand)
            if loaded is not None:
                self._models[cand.name] = loaded
        if config.model_names is not None:
            failed = [n for n in config.model_names if n not in self._models]
            if failed:
                reasons = "; ".join(f"'{n}': {self._skipped[n]}" for n in failed)
                raise ConfigError(f"requested model(s) could not be loaded: {reasons}")
        if not self._models:
            log.warning("no models to serve in %s", ", ".join(map(str, config.model_dirs)))
        # Created last so a failed load leaves no threads behind.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.executor_threads, thread_name_prefix="mesh-infer"
        )
        # Guards _closed, _waiting, and each model's queue, running and waiting.
        # Held only for a few bookkeeping steps, never while a model runs.
        self._lock = threading.Lock()
        self._closed = False
        # Workers of every model submitted to the executor but not yet on a
        # thread; a worker with more work yields its thread when some of
        # these belong to another model.
        self._waiting = 0
        self._inbox: _Inbox | None = None

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

    def _get(self, name: str) -> _Loaded:
        loaded = self._models.get(name)
        if loaded is None:
            available = ", ".join(f"'{n}'" for n in self.names) or "none"
            raise ModelNotFound(f"model '{name}' is not served here; available models: {available}")
        return loaded

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
        loaded = self._get(model)
        validate_inputs(loaded.spec, inputs)
        loop = asyncio.get_running_loop()
        inbox = self._inbox
        if inbox is None or inbox.loop is not loop:
            inbox = self._inbox = _Inbox(loop)
        # A snapshot of the mapping: the caller may reuse it while the thread runs.
        call = _Call(dict(inputs), _run_options(), loop.create_future(), inbox)
        with self._lock:
            if self._closed:
                raise InferenceFailed(f"model '{model}': the runtime is closed")
            if loaded.running < loaded.limit:
                self._start_worker(loaded)
            loaded.queue.append(call)
        return call

    def cancel(self, call: RuntimeCall) -> None:
        """Drop ``call`` if still queued, else ask its run to stop; its result is discarded."""
        with self._lock:
            call.cancelled = True  # still queued: the worker skips it
        # Already running: nobody wants the result, so free the CPU early
        # rather than finish. Set either way, as the worker may be taking
        # the call right now; a run that starts terminated stops at once.
        call.options.terminate = True
        call.future.cancel()

    def _start_worker(self, loaded: _Loaded) -> None:
        """Take a slot of ``loaded`` for a new worker; call with the lock held."""
        try:
            self._executor.submit(self._work, loaded)
        except RuntimeError as exc:  # the interpreter is shutting down
            raise InferenceFailed(f"model '{loaded.spec.name}': the runtime is closed") from exc
        loaded.running += 1
        loaded.waiting += 1
        self._waiting += 1

    def _work(self, loaded: _Loaded) -> None:
        """Run queued calls of one model on a worker thread until none are left.

        Taking the next call here, rather than returning to the loop for it,
        keeps the thread busy while the loop is busy elsewhere, and costs no
        wakeup.
        """
        with self._lock:
            loaded.waiting -= 1
            self._waiting -= 1
        # A worker that has just got its thread runs at least one call before
        # it may yield, or workers could pass the threads around forever.
        call = self._next_call(loaded, may_yield=False)
        while call is not None:
            started = time.perf_counter()
            outcome: Tensors | BaseException
            try:
                outcome = loaded.run(call.feeds, call.options)
            except BaseException as exc:
                # Whatever it is, it is the caller's: raised where it awaits,
                # as concurrent.futures would. Letting it end this loop would
                # strand the model's slot and every call queued behind it.
                outcome = exc
                took_s = None  # a failed call says nothing about service time
            else:
                took_s = time.perf_counter() - started
            # Accounted before the caller hears: whoever reads load() once
            # its answer arrives sees the call finished, and timed.
            self._account(loaded, took_s)
            call.inbox.put(call, outcome)
            call = self._next_call(loaded, may_yield=True)

    def _account(self, loaded: _Loaded, took_s: float | None) -> None:
        """A call of ``loaded`` ended; ``took_s`` (None: it failed) feeds its average."""
        with self._lock:
            loaded.executing -= 1
            if took_s is not None:
                loaded.service_ewma_s = ewma(loaded.service_ewma_s, took_s)

    def _next_call(self, loaded: _Loaded, *, may_yield: bool) -> _Call | None:
        """The next call this worker should run; None when it should stop."""
        with self._lock:
            queue = loaded.queue
            while queue and queue[0].cancelled:
                queue.popleft()
            if not queue:
                loaded.running -= 1
                return None
            if may_yield and self._waiting > loaded.waiting:
                # Another model's worker waits for a thread: go to the back of
                # the executor's line rather than keep this thread, so a busy
                # model cannot starve the others. The slot goes along.
                with contextlib.suppress(RuntimeError):  # interpreter shutdown: stay
                    self._executor.submit(self._work, loaded)
                    loaded.waiting += 1
                    self._waiting += 1
                    return None
            loaded.executing += 1
            return queue.popleft()

    def load(self) -> list[ModelLoad]:
        """How busy each model is now: queued and executing calls, service-time average."""
        with self._lock:
            return [
                ModelLoad(
                    name=name,
                    queued=len(loaded.queue),
                    executing=loaded.executing,
                    limit=loaded.limit,
                    service_ewma_s=loaded.service_ewma_s,
                )
                for name, loaded in sorted(self._models.items())
            ]

    @property
    def threads(self) -> int:
        """Worker threads shared by all models."""
        return self._config.executor_threads

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Refuse new calls, fail queued ones and wait for running ones. Idempotent.

        A call still waiting for a thread fails with InferenceFailed; one
        already running finishes, and its caller gets its result.
        """
        self._refuse_calls()
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        self._refuse_calls()
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    def _refuse_calls(self) -> None:
        dropped: list[tuple[str, _Call]] = []
        with self._lock:
            self._closed = True
            for name, loaded in self._models.items():
                dropped.extend((name, call) for call in loaded.queue if not call.cancelled)
                loaded.queue.clear()
        for name, call in dropped:
            call.inbox.put(call, InferenceFailed(f"model '{name}': the runtime is closed"))

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

    # --- loading ------------------------------------------------------------

    def _load(self, cand: ModelFile) -> _Loaded | None:
        """Load one model; None (logged) for a user's file that cannot be served."""
        if cand.entry is not None:
            # A manifest model is part of what this node promises; failing
            # quietly would leave a mesh that silently lacks it.
            return self._load_listed(cand, cand.entry)
        try:
            return self._load_unlisted(cand)
        except ModelError as exc:
            self._skipped[cand.name] = exc.message
            log.error("skipping model file %s: %s", cand.path, exc.message)
            return None

    def _load_listed(self, cand: ModelFile, entry: ManifestEntry) -> _Loaded:
        data = read_model_bytes(cand.path, missing_is_integrity=True)
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry.sha256:
            raise ModelIntegrityError(
                f"model '{entry.name}': {cand.path} has sha256 {actual}, but the"
                f" manifest expects {entry.sha256}; refusing to serve a modified file"
            )
        session = self._session(cand, data)
        inputs, outputs = _signature(cand, session)
        for kind, declared, real in (
            ("input", entry.inputs, inputs),
            ("output", entry.outputs, outputs),
        ):
            if declared is None:
                continue
            problem = signature_mismatch(declared, real, kind)
            if problem is not None:
                raise ModelIntegrityError(
                    f"model '{entry.name}' ({cand.path}) does not match its manifest: {problem}"
                )
        spec = ModelSpec(
            name=entry.name,
            version=entry.version,
            sha256=actual,
            inputs=inputs,
            outputs=outputs,
            description=entry.description,
            accuracy=entry.accuracy,
            compute_only=entry.compute_only,
            source="manifest",
        )
        return self._wrap(spec, session, "manifest")

    def _load_unlisted(self, cand: ModelFile) -> _Loaded:
        data = read_model_bytes(cand.path, missing_is_integrity=False)
        session = self._session(cand, data)
        inputs, outputs = _signature(cand, session)
        spec = ModelSpec(
            name=cand.name,
            version=UNLISTED_VERSION,
            sha256=hashlib.sha256(data).hexdigest(),
            inputs=inputs,
            outputs=outputs,
            source="file",
        )
        return self._wrap(spec, session, "file")

    def _session(self, cand: ModelFile, data: bytes) -> Any:
        # Built from the bytes we hashed, not the path, so the model that runs
        # is exactly the one that was verified. (Models with external data
        # files are therefore not supported.)
        try:
            return ort.InferenceSession(
                data,
                sess_options=self._session_options(),
                providers=["CPUExecutionProvider"],
            )
        except _ORT_ERRORS as exc:
            raise ModelError(
                f"model '{cand.name}': onnxruntime cannot load {cand.path}: {_ort_message(exc)}"
            ) from exc

    def _session_options(self) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._config.intra_op_threads
        # Parallelism comes from concurrent calls, not from inside one call.
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads keep a core busy between calls; on a small edge
        # device that is power and heat for nothing.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # onnxruntime logs to stderr, behind our logging; keep only its errors
        # (load failures also come back to us as exceptions).
        opts.log_severity_level = 3
        return opts

    def _wrap(self, spec: ModelSpec, session: Any, source: ModelSource) -> _Loaded:
        log.info(
            "serving model %s version %s (%s, sha256 %s)",
            spec.name,
            spec.version,
            source,
            spec.sha256[:12],
        )
        return _Loaded(
            spec=spec,
            session=session,
            limit=self._config.per_model_concurrency,
            output_names=[t.name for t in spec.outputs],
        )


# --- helpers ------------------------------------------------------------------


def _check_config(config: RuntimeConfig) -> None:
    for key in ("intra_op_threads", "per_model_concurrency", "executor_threads"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"runtime.{key} must be an integer >= 1, got {value!r}")
    if not config.model_dirs:
        raise ConfigError("runtime.model_dirs is empty: give at least one model directory")


def _signature(
    cand: ModelFile, session: Any
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The model's own inputs and outputs; ModelError if a type cannot be served."""

    def convert(args: Sequence[Any], kind: str) -> tuple[TensorSpec, ...]:
        specs = []
        for arg in args:
            try:
                dtype = dtype_from_onnx(arg.type)
            except ModelError as exc:
                raise ModelError(
                    f"model '{cand.name}' ({cand.path}): {kind} '{arg.name}' has a type"
                    f" edgemesh cannot serve: {exc.message}"
                ) from exc
            specs.append(TensorSpec(arg.name, dtype, shape_from_onnx(arg.shape)))
        return tuple(specs)

    return convert(session.get_inputs(), "input"), convert(session.get_outputs(), "output")


def _run_options() -> Any:
    """Per-call options, so one call can be terminated without touching others."""
    options = ort.RunOptions()
    # A failed or terminated run raises, and we map and report that error;
    # onnxruntime would also print it to stderr, behind our logging.
    options.log_severity_level = 4
    return options


def _ort_message(exc: BaseException) -> str:
    # onnxruntime messages look like "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ...";
    # the prefix says nothing to a user, the rest does.
    text = str(exc).strip()
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return " ".join(text.split())
