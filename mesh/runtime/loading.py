"""Loading models into onnxruntime: verify each file, open a session, read its signature.

Each directory in ``RuntimeConfig.model_dirs`` holds models in the layouts of
:mod:`mesh.runtime.model_files`; a model its ``manifest.toml`` lists must match its
sha256 and declared signature or loading fails, as the node must not start
without a model it promises. Any other ``*.onnx`` file is a user's own model
and is served as it is, under its file stem; one that cannot be served is
logged and skipped so a single bad file does not take the node down.

This is also the one module that knows onnxruntime's exception classes, so a
:class:`LoadedModel` maps them into the mesh's error tree when it runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from mesh.config import RuntimeConfig
from mesh.core.models.manifest import ManifestEntry
from mesh.core.models.signatures import (
    ModelSpec,
    TensorSpec,
    dtype_from_onnx,
    shape_from_onnx,
    signature_mismatch,
)
from mesh.core.models.versions import FIRST_VERSION
from mesh.core.wire.tensors import Tensors
from mesh.errors import (
    ConfigError,
    InferenceFailed,
    InvalidInput,
    ModelError,
    ModelIntegrityError,
)
from mesh.runtime.model_files import (
    ModelFile,
    find_model_files,
    read_model_bytes,
    select_model_files,
)

__all__ = [
    "UNLISTED_VERSION",
    "LoadedModel",
    "check_runtime_config",
    "load_file",
    "load_models",
    "new_run_options",
]

log = logging.getLogger(__name__)

# Version given to a model file found without one (``DIR/name.onnx``); its
# sha256 is what identifies it.
UNLISTED_VERSION = FIRST_VERSION


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
class LoadedModel:
    """A verified model and its onnxruntime session, ready to run on any thread."""

    spec: ModelSpec
    session: Any  # ort.InferenceSession; untyped
    output_names: list[str] = field(default_factory=list)
    # The file it was loaded from (None: built in memory).
    path: Path | None = None

    def run(self, feeds: Tensors, options: Any) -> Tensors:
        """Run one call (on a worker thread: InferenceSession.run is thread-safe).

        ``options`` comes from :func:`new_run_options`. Raises InvalidInput or
        InferenceFailed for what onnxruntime refuses; anything else passes as it is.
        """
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


def new_run_options() -> Any:
    """Per-call options, so one call can be terminated (``.terminate = True``) alone."""
    options = ort.RunOptions()
    # A failed or terminated run raises, and we map and report that error;
    # onnxruntime would also print it to stderr, behind our logging.
    options.log_severity_level = 4
    return options


def check_runtime_config(config: RuntimeConfig) -> None:
    """ConfigError for a runtime setting that cannot work, before anything is loaded."""
    for key in ("intra_op_threads", "per_model_concurrency", "executor_threads"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"runtime.{key} must be an integer >= 1, got {value!r}")
    if not config.model_dirs:
        raise ConfigError("runtime.model_dirs is empty: give at least one model directory")
    if config.store_dir is not None:
        # Made here, so a fresh --model-store is scanned like any model dir.
        try:
            config.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"model_store: cannot create {config.store_dir}: {exc.strerror or exc}"
            ) from None


def load_models(config: RuntimeConfig) -> list[LoadedModel]:
    """Find, verify and load the models of ``config``: every version of every name.

    Raises ConfigError (a bad directory, an unknown or unloadable requested
    model) or ModelError (a manifest model that fails its checks).
    """
    candidates = find_model_files(config.model_dirs)
    selected = select_model_files(candidates, config.model_names)
    models: list[LoadedModel] = []
    skipped: dict[str, str] = {}
    for cand in selected:
        if cand.entry is not None:
            # A manifest model is part of what this node promises; failing
            # quietly would leave a mesh that silently lacks it.
            models.append(load_file(cand, config))
            continue
        try:
            models.append(load_file(cand, config))
        except ModelError as exc:
            skipped[cand.name] = exc.message
            log.error("skipping model file %s: %s", cand.path, exc.message)
    if config.model_names is not None:
        loaded = {m.spec.name for m in models}
        failed = [n for n in config.model_names if n not in loaded]
        if failed:
            reasons = "; ".join(f"'{n}': {skipped[n]}" for n in failed)
            raise ConfigError(f"requested model(s) could not be loaded: {reasons}")
    if not models:
        log.warning("no models to serve in %s", ", ".join(map(str, config.model_dirs)))
    return models


def load_file(
    cand: ModelFile, config: RuntimeConfig, *, expect_sha256: str | None = None
) -> LoadedModel:
    """Verify and load one model file; ModelError (ModelIntegrityError) if it cannot be served.

    ``expect_sha256`` (a model that arrived from elsewhere): the bytes must
    have this checksum, or nothing is loaded. A manifest entry's own sha256
    and signature are always checked. The session is built from the bytes
    that were hashed, so what runs is exactly what was verified.
    """
    data = read_model_bytes(cand.path, missing_is_integrity=cand.entry is not None)
    actual = hashlib.sha256(data).hexdigest()
    if expect_sha256 is not None and actual != expect_sha256:
        raise ModelIntegrityError(
            f"model '{cand.name}': {cand.path} has sha256 {actual}, expected"
            f" {expect_sha256}; refusing to serve it"
        )
    if cand.entry is not None:
        return _load_listed(cand, cand.entry, config, data, actual)
    return _load_unlisted(cand, config, data, actual)


def _load_listed(
    cand: ModelFile, entry: ManifestEntry, config: RuntimeConfig, data: bytes, actual: str
) -> LoadedModel:
    if actual != entry.sha256:
        raise ModelIntegrityError(
            f"model '{entry.name}': {cand.path} has sha256 {actual}, but the"
            f" manifest expects {entry.sha256}; refusing to serve a modified file"
        )
    session = _session(cand, data, config)
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
    return _loaded(spec, session, cand)


def _load_unlisted(cand: ModelFile, config: RuntimeConfig, data: bytes, actual: str) -> LoadedModel:
    session = _session(cand, data, config)
    inputs, outputs = _signature(cand, session)
    spec = ModelSpec(
        name=cand.name,
        version=cand.version,
        sha256=actual,
        inputs=inputs,
        outputs=outputs,
        source="file",
    )
    return _loaded(spec, session, cand)


def _session(cand: ModelFile, data: bytes, config: RuntimeConfig) -> Any:
    # Built from the bytes we hashed, not the path, so the model that runs
    # is exactly the one that was verified. (Models with external data
    # files are therefore not supported.)
    try:
        return ort.InferenceSession(
            data,
            sess_options=_session_options(config),
            providers=["CPUExecutionProvider"],
        )
    except _ORT_ERRORS as exc:
        raise ModelError(
            f"model '{cand.name}': onnxruntime cannot load {cand.path}: {_ort_message(exc)}"
        ) from exc


def _session_options(config: RuntimeConfig) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.intra_op_threads
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


def _loaded(spec: ModelSpec, session: Any, cand: ModelFile) -> LoadedModel:
    log.info(
        "serving model %s version %s (%s, sha256 %s)",
        spec.name,
        spec.version,
        spec.source,
        spec.sha256[:12],
    )
    return LoadedModel(
        spec=spec, session=session, output_names=[t.name for t in spec.outputs], path=cand.path
    )


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


def _ort_message(exc: BaseException) -> str:
    # onnxruntime messages look like "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ...";
    # the prefix says nothing to a user, the rest does.
    text = str(exc).strip()
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return " ".join(text.split())
