"""The onnxruntime edge: finds models on disk, checks them, and runs them off the event loop.

Loading is synchronous and happens once, at start-up (call ``Runtime(config)``
from a thread with :func:`asyncio.to_thread` if the loop is already running).
Each directory in ``RuntimeConfig.model_dirs`` may hold a ``manifest.toml``;
a model listed there must match its sha256 and declared signature or the
node refuses to start. Any other ``*.onnx`` file is a user's own model and is
served as it is, under its file stem; one that cannot be served is logged and
skipped so a single bad file does not take the node down.

Inference runs in one shared thread pool. A per-model semaphore bounds how
many calls of one model run at once, and its slot is held until the worker
thread finishes, not merely until the caller stops waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from mesh.config import RuntimeConfig
from mesh.core.models import (
    ManifestEntry,
    ModelSource,
    ModelSpec,
    TensorSpec,
    check_model_name,
    dtype_from_onnx,
    parse_manifest,
    shape_from_onnx,
    signature_mismatch,
    validate_inputs,
)
from mesh.errors import (
    ConfigError,
    InferenceFailed,
    InvalidInput,
    ModelError,
    ModelIntegrityError,
    ModelNotFound,
)

__all__ = ["MANIFEST_NAME", "UNLISTED_VERSION", "Runtime", "Tensors"]

log = logging.getLogger(__name__)

Tensors = dict[str, NDArray[Any]]

MANIFEST_NAME = "manifest.toml"
# Version given to a model file that no manifest describes. "0" says "not
# released through a manifest"; its sha256 is what identifies it.
UNLISTED_VERSION = "0"


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


@dataclass(frozen=True)
class _Candidate:
    """A model file found on disk, before it is loaded."""

    name: str
    path: Path
    entry: ManifestEntry | None  # None: not in any manifest


@dataclass
class _Loaded:
    """A model ready to run: its spec, its session and its concurrency limit."""

    spec: ModelSpec
    session: Any  # ort.InferenceSession; untyped
    semaphore: asyncio.Semaphore
    output_names: list[str] = field(default_factory=list)

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


class Runtime:
    """Serves the ONNX models of ``config.model_dirs``.

    Use as a context manager (sync or async), or call :meth:`close` /
    :meth:`aclose`. One Runtime serves one event loop: its semaphores bind to
    the loop that first waits on them.
    """

    def __init__(self, config: RuntimeConfig) -> None:
        """Find, verify and load the models; raises ConfigError or ModelError."""
        _check_config(config)
        self._config = config
        self._skipped: dict[str, str] = {}
        candidates = _discover(config.model_dirs)
        selected = _select(candidates, config.model_names)
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
        self._closed = False

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

    async def infer(self, model: str, inputs: Mapping[str, NDArray[Any]]) -> Tensors:
        """Run one call of ``model`` on a worker thread; outputs keyed by name.

        Raises ModelNotFound, InvalidInput or InferenceFailed.

        Cancelling the awaiting task (a deadline, a client gone) drops a call
        still queued for a thread. A call already running cannot be stopped
        mid-kernel: it is asked to terminate at onnxruntime's next kernel
        boundary, and its result is discarded. The model's concurrency slot
        is freed only when the thread is done, so the limit counts real work.
        """
        loaded = self._get(model)
        validate_inputs(loaded.spec, inputs)
        if self._closed:
            raise InferenceFailed(f"model '{model}': the runtime is closed")
        # A snapshot: the caller may reuse its mapping while the thread runs.
        feeds = dict(inputs)
        options = _run_options()
        loop = asyncio.get_running_loop()
        semaphore = loaded.semaphore
        await semaphore.acquire()
        try:
            work = self._executor.submit(loaded.run, feeds, options)
        except RuntimeError as exc:  # the executor was shut down meanwhile
            semaphore.release()
            raise InferenceFailed(f"model '{model}': the runtime is closed") from exc
        work.add_done_callback(_release_on(loop, semaphore))
        try:
            return await asyncio.wrap_future(work)
        except asyncio.CancelledError:
            # Nobody wants the result: free the CPU early rather than finish.
            options.terminate = True
            raise

    # --- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Refuse new calls and wait for running ones to finish. Idempotent."""
        self._closed = True
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)

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

    def _load(self, cand: _Candidate) -> _Loaded | None:
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

    def _load_listed(self, cand: _Candidate, entry: ManifestEntry) -> _Loaded:
        data = _read(cand.path, missing_is_integrity=True)
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

    def _load_unlisted(self, cand: _Candidate) -> _Loaded:
        data = _read(cand.path, missing_is_integrity=False)
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

    def _session(self, cand: _Candidate, data: bytes) -> Any:
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
            semaphore=asyncio.Semaphore(self._config.per_model_concurrency),
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


def _discover(dirs: Sequence[Path]) -> list[_Candidate]:
    """Every model file of every directory; ConfigError on a bad dir or a duplicate name."""
    found: dict[str, _Candidate] = {}
    for directory in dirs:
        for cand in _discover_dir(Path(directory)):
            other = found.get(cand.name)
            if other is not None:
                raise ConfigError(
                    f"two models are named '{cand.name}': {other.path} and {cand.path};"
                    " rename one or remove its directory from runtime.model_dirs"
                )
            found[cand.name] = cand
    return list(found.values())


def _discover_dir(directory: Path) -> list[_Candidate]:
    if not directory.is_dir():
        raise ConfigError(f"model directory {directory} does not exist or is not a directory")
    manifest = directory / MANIFEST_NAME
    entries = _read_manifest(manifest) if manifest.is_file() else {}
    cands = [_Candidate(e.name, directory / e.file, e) for e in entries.values()]
    listed = {(directory / e.file).resolve() for e in entries.values()}
    taken = {c.name for c in cands}
    for path in sorted(directory.glob("*.onnx")):
        if not path.is_file() or path.resolve() in listed:
            continue
        name = path.stem
        try:
            check_model_name(name)
        except ConfigError as exc:
            log.error("skipping model file %s: %s; rename the file", path, exc.message)
            continue
        if name in taken:
            raise ConfigError(
                f"{path} would be served as '{name}', but {manifest} already lists a"
                f" model of that name; rename the file or list it in the manifest"
            )
        cands.append(_Candidate(name, path, None))
    return cands


def _read_manifest(path: Path) -> dict[str, ManifestEntry]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return parse_manifest(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc


def _select(cands: list[_Candidate], names: tuple[str, ...] | None) -> list[_Candidate]:
    if names is None:
        return cands
    by_name = {c.name: c for c in cands}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        available = ", ".join(f"'{n}'" for n in sorted(by_name)) or "none"
        raise ConfigError(
            f"runtime.model_names lists {', '.join(repr(n) for n in unknown)}, which"
            f" no model directory has; available models: {available}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def _read(path: Path, *, missing_is_integrity: bool) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        if missing_is_integrity:
            raise ModelIntegrityError(
                f"{path} is listed in its manifest but does not exist"
            ) from exc
        raise ModelError(f"{path} disappeared while loading") from exc
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _signature(
    cand: _Candidate, session: Any
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


def _release_on(
    loop: asyncio.AbstractEventLoop, semaphore: asyncio.Semaphore
) -> Callable[[concurrent.futures.Future[Tensors]], None]:
    """A done-callback that frees a semaphore slot from whatever thread finishes the work."""

    def release(_: concurrent.futures.Future[Tensors]) -> None:
        # A closed loop raises RuntimeError; nobody is left to wait for the slot.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(semaphore.release)

    return release


def _ort_message(exc: BaseException) -> str:
    # onnxruntime messages look like "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ...";
    # the prefix says nothing to a user, the rest does.
    text = str(exc).strip()
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return " ".join(text.split())
