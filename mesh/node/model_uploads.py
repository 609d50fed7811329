"""Models pushed by a client: uploads in chunks, verified, then handed to the model store.

``model_push_begin`` opens an upload (its sha256 and size announced), each
``model_push_chunk`` feeds an :class:`~mesh.core.wire.model_transfer.Assembly`
that hashes the bytes in file order as they are written to a hidden temporary
file beside the models, and ``model_push_end`` installs the file only if its
size and sha256 are the ones announced. An upload belongs to the connection
that opened it; a bounded number run at once and an idle one is dropped, its
file deleted. The temporary file, the store's interface and the limits are
shared with pulls (:mod:`mesh.node.model_transfer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from mesh.core.models.signatures import ModelSpec
from mesh.core.wire.model_transfer import (
    DEFAULT_WINDOW,
    MAX_CHUNK_BYTES,
    Assembly,
    ModelFileInfo,
    PushBegin,
    parse_push_begin,
    parse_push_chunk,
    parse_push_end,
)
from mesh.errors import BadRequest, MeshError, ModelError, Overloaded
from mesh.rpc import RpcConnection
from mesh.runtime.model_files import NO_MODEL_STORE

__all__ = ["ModelFiles", "TransferConfig", "Uploads", "open_part"]

log = logging.getLogger(__name__)

# A temporary file's name: hidden and not *.onnx, so no model scan or watcher
# ever takes a half-written copy for a model.
_PART_SUFFIX = ".part"


class ModelFiles(Protocol):
    """What transfer needs of the node's model store."""

    def holding(self) -> list[ModelSpec]:
        """Every version served here."""
        ...

    def file_of(self, sha256: str) -> Path | None:
        """The file of a version served here, by its sha256."""
        ...

    async def install(
        self, path: Path, *, name: str, version: str | None, sha256: str
    ) -> ModelSpec:
        """Move a verified file in as a new version and serve it (ModelError if it cannot)."""
        ...


@dataclass(frozen=True)
class TransferConfig:
    """Limits of transfers, both ways."""

    # Where temporary copies are written: beside the models, so that install
    # is a rename on the same file system.
    incoming_dir: Path | None
    # Chunk requests a pull keeps in flight.
    window: int = DEFAULT_WINDOW
    # Largest chunk this node reads or asks for.
    chunk_bytes: int = MAX_CHUNK_BYTES
    # How long one chunk (or a description) may take before the holder is given up.
    call_timeout_s: float = 30.0
    # Pushes in progress at once; an upload idle this long is dropped.
    max_uploads: int = 4
    upload_idle_s: float = 120.0
    # --fetch-models: a model asked for that a live peer serves is pulled.
    fetch: bool = False


def open_part(directory: Path | None, name: str) -> tuple[Path, IO[bytes]]:
    """A new hidden temporary file in ``directory`` (OSError mapped to ModelError).

    None: the node has no model store (see :func:`model_store_dir`).
    """
    if directory is None:
        raise ModelError(NO_MODEL_STORE)
    path = directory / f".{name}-{secrets.token_hex(6)}{_PART_SUFFIX}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return path, path.open("xb")
    except OSError as exc:
        raise ModelError(f"cannot write a model into {directory}: {exc.strerror}") from None


@dataclass(eq=False)
class _Upload:
    """A push in progress: its assembly, its temporary file, who sends it."""

    begin: PushBegin
    assembly: Assembly
    path: Path
    handle: IO[bytes]
    connection: RpcConnection
    touched: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Uploads:
    """The pushes in progress on one node."""

    def __init__(self, files: ModelFiles, config: TransferConfig) -> None:
        self._files = files
        self._config = config
        self._open: dict[str, _Upload] = {}
        self.pushed = 0

    def __len__(self) -> int:
        return len(self._open)

    def close(self) -> None:
        """Drop every unfinished upload and its file."""
        for upload_id in list(self._open):
            self.drop(upload_id)

    async def begin(self, connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
        """``model_push_begin``: open an upload; the id for its chunks and end."""
        begin = parse_push_begin(params)
        self._expire()
        if len(self._open) >= self._config.max_uploads:
            raise Overloaded(
                f"{len(self._open)} model uploads are already in progress here; "
                "push again when one has finished"
            )
        info = ModelFileInfo(begin.name, begin.version or "", begin.sha256, begin.size)
        assembly = Assembly(info, chunk_bytes=self._config.chunk_bytes, window=self._config.window)
        path, handle = await asyncio.to_thread(open_part, self._config.incoming_dir, begin.name)
        upload_id = secrets.token_hex(8)
        self._open[upload_id] = _Upload(
            begin, assembly, path, handle, connection, touched=time.monotonic()
        )
        return {"upload": upload_id, "max_chunk_bytes": assembly.chunk_bytes}

    async def chunk(self, connection: RpcConnection, params: list[Any]) -> None:
        """``model_push_chunk``: one chunk of an upload (any order within the window)."""
        chunk = parse_push_chunk(params)
        upload = self._get(chunk.upload, connection)
        upload.touched = time.monotonic()
        try:
            ready = upload.assembly.feed(chunk.offset, chunk.data)
        except MeshError:
            self.drop(chunk.upload)
            raise
        # In feed order: the lock hands itself over first come, first served.
        async with upload.lock:
            if ready:
                try:
                    await asyncio.to_thread(_write_and_absorb, upload, ready)
                except (OSError, ValueError) as exc:
                    # ValueError: a bad chunk dropped the upload (closed its file) meanwhile.
                    self.drop(chunk.upload)
                    raise ModelError(f"upload {chunk.upload} cannot be written: {exc}") from None

    async def end(self, connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
        """``model_push_end``: verify the upload and serve it; the model as served."""
        upload_id = parse_push_end(params)
        upload = self._get(upload_id, connection)
        # Out of the table at once: a second end for it finds nothing to install.
        del self._open[upload_id]
        try:
            async with upload.lock:
                await asyncio.to_thread(upload.handle.close)
            upload.assembly.verify()
            begin = upload.begin
            spec = await self._files.install(
                upload.path, name=begin.name, version=begin.version, sha256=begin.sha256
            )
        finally:
            _discard(upload)
        self.pushed += 1
        log.info(
            "model %s version %s (sha256 %s) pushed by %s",
            spec.name,
            spec.version,
            spec.sha256[:12],
            connection.peer,
        )
        return {**spec.to_wire(), "size": begin.size}

    def _get(self, upload_id: str, connection: RpcConnection) -> _Upload:
        upload = self._open.get(upload_id)
        if upload is None or upload.connection is not connection:
            raise BadRequest(
                f"no upload {upload_id} on this connection; start with model_push_begin"
            )
        return upload

    def _expire(self) -> None:
        now = time.monotonic()
        for upload_id, upload in list(self._open.items()):
            if upload.connection.closed or now - upload.touched > self._config.upload_idle_s:
                log.info("dropping the unfinished upload of model %s", upload.begin.name)
                self.drop(upload_id)

    def drop(self, upload_id: str) -> None:
        """Forget an upload and delete its file."""
        upload = self._open.pop(upload_id, None)
        if upload is not None:
            _discard(upload)


def _write_and_absorb(upload: _Upload, ready: list[bytes]) -> None:
    upload.handle.writelines(ready)
    upload.assembly.absorb(ready)


def _discard(upload: _Upload) -> None:
    # Small and local: closing and unlinking a file here beats a thread hop.
    with contextlib.suppress(OSError):
        upload.handle.close()
    upload.path.unlink(missing_ok=True)
