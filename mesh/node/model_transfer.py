"""Models travelling between nodes: serving a model's file in chunks, pulling one
from a peer, taking one pushed by a client.

The wire and every check live in :mod:`mesh.core.wire.model_transfer`; this
module does the I/O. A pull asks the peers that gossip the model (best first,
:func:`~mesh.core.wire.model_transfer.choose_sources`) over the mesh links the
node already keeps, with a bounded window of chunk requests in flight, writes
the chunks in file order to a hidden temporary file beside the node's models,
and hands the file to the model store only once its size and sha256 are the
ones promised. A copy that fails (a peer gone, a short chunk, a wrong hash) is
thrown away and the next holder is asked; when none delivers, the caller gets
:class:`~mesh.errors.ModelTransferFailed` with every holder's reason. A push
from a client goes through the same :class:`~mesh.core.wire.model_transfer.Assembly`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from mesh.core.models.signatures import ModelSpec
from mesh.core.wire.model_transfer import (
    CHUNK,
    DEFAULT_WINDOW,
    DESCRIBE,
    MAX_CHUNK_BYTES,
    Assembly,
    ChunkAsk,
    ModelFileInfo,
    ModelRef,
    Offer,
    PullReport,
    PushBegin,
    choose_sources,
    chunk_span,
    parse_chunk,
    parse_describe,
    parse_pull,
    parse_push_begin,
    parse_push_chunk,
    parse_push_end,
)
from mesh.errors import (
    BadRequest,
    MeshError,
    ModelError,
    ModelNotFound,
    ModelTransferFailed,
    Overloaded,
    ProtocolError,
)
from mesh.rpc import RpcConnection

__all__ = ["ModelFiles", "ModelTransfer", "TransferConfig"]

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
    incoming_dir: Path
    # Chunk requests a pull keeps in flight.
    window: int = DEFAULT_WINDOW
    # Largest chunk this node reads or asks for.
    chunk_bytes: int = MAX_CHUNK_BYTES
    # How long one chunk (or a description) may take before the holder is given up.
    call_timeout_s: float = 30.0
    # Pushes in progress at once; an upload idle this long is dropped.
    max_uploads: int = 4
    upload_idle_s: float = 120.0


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


class ModelTransfer:
    """One node's side of model transfer: the methods it serves, and its pulls.

    ``offers`` says which live peers gossip which models; ``link`` gives the
    open connection to a peer. :meth:`run` owns background fetches
    (``--fetch-models``) until it is cancelled.
    """

    def __init__(
        self,
        files: ModelFiles,
        config: TransferConfig,
        *,
        offers: Callable[[], list[Offer]],
        link: Callable[[str], RpcConnection | None],
    ) -> None:
        self._files = files
        self._config = config
        self._offers = offers
        self._link = link
        # One pull per model reference at a time; later askers wait for it.
        self._pulls: dict[ModelRef, asyncio.Task[PullReport | MeshError]] = {}
        self._fetched: set[str] = set()
        self._uploads: dict[str, _Upload] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self.counters = {"pulled": 0, "pull_failed": 0, "copies_rejected": 0, "pushed": 0}

    async def run(self) -> None:
        """Own the pulls started here until cancelled; then drop every unfinished copy."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await asyncio.Event().wait()
        finally:
            self._tasks = None
            for upload_id in list(self._uploads):
                self._drop_upload(upload_id)

    # --- serving: describe and chunks ------------------------------------------

    def _held(self, sha256: str) -> tuple[ModelSpec, Path]:
        spec = next((s for s in self._files.holding() if s.sha256 == sha256), None)
        path = self._files.file_of(sha256)
        if spec is None or path is None:
            raise ModelNotFound(f"no model file with sha256 {sha256[:12]}… is served here")
        return spec, path

    def describe(self, _: RpcConnection, params: list[Any]) -> dict[str, Any]:
        """``model_describe``: name, version and size of the file with that sha256."""
        spec, path = self._held(parse_describe(params))
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise ModelError(f"cannot read the file of {spec.name}: {exc.strerror}") from None
        info = ModelFileInfo(spec.name, spec.version, spec.sha256, size)
        return info.to_wire(self._config.chunk_bytes)

    async def chunk(self, _: RpcConnection, params: list[Any]) -> bytes:
        """``model_chunk``: bytes of a file served here, read off the event loop.

        The bytes are sent as they are on disk now: the puller verifies them,
        which is how a file changed under a running node is caught.
        """
        ask = parse_chunk(params)
        spec, path = self._held(ask.sha256)
        try:
            return await asyncio.to_thread(_read_span, path, ask, self._config.chunk_bytes)
        except OSError as exc:
            raise ModelError(f"cannot read the file of {spec.name}: {exc.strerror}") from None

    # --- pulling -----------------------------------------------------------------

    async def pull_method(self, _: RpcConnection, params: list[Any]) -> dict[str, Any]:
        """``model_pull``: fetch a model from a peer and serve it."""
        return (await self.pull(parse_pull(params))).to_wire()

    async def pull(self, ref: ModelRef) -> PullReport:
        """Fetch ``ref`` from a peer that holds it, verify it, serve it.

        Already served here: answered at once, ``source`` None. A pull of
        the same reference already under way is joined, not repeated.
        """
        here = self._served(ref)
        if here is not None:
            size = _size_or_zero(self._files.file_of(here.sha256))
            return PullReport(here.name, here.version, here.sha256, size, None, 0.0)
        task = self._pulls.get(ref)
        if task is None:
            if self._tasks is None:
                raise ModelError("this node is not serving yet; pull again once it is")
            task = self._tasks.create_task(self._pull_once(ref), name=f"pull {ref}")
            self._pulls[ref] = task
            task.add_done_callback(lambda _: self._pulls.pop(ref, None))
        outcome = await asyncio.shield(task)
        if isinstance(outcome, MeshError):
            raise outcome
        return outcome

    def fetch_in_background(self, name: str) -> None:
        """``--fetch-models``: start pulling ``name`` if a live peer has it, once per name."""
        if name in self._fetched or self._tasks is None or self._served(ModelRef(name)):
            return
        if choose_sources(ModelRef(name), self._offers()) is None:
            return
        self._fetched.add(name)
        ref = ModelRef(name)
        if ref not in self._pulls:
            log.info("model %s is asked for and a peer has it: fetching it", name)
            task = self._tasks.create_task(self._pull_once(ref), name=f"fetch {name}")
            self._pulls[ref] = task
            task.add_done_callback(lambda _: self._pulls.pop(ref, None))

    def _served(self, ref: ModelRef) -> ModelSpec | None:
        specs = [s for s in self._files.holding() if s.name == ref.name]
        if ref.version is not None:
            specs = [s for s in specs if s.version == ref.version]
            return specs[0] if specs else None
        sources = choose_sources(ref, self._offers())
        if sources is None:
            return specs[0] if specs else None
        # Unpinned: what we have counts only if it is the file the mesh would send.
        return next((s for s in specs if s.sha256 == sources.sha256), None)

    async def _pull_once(self, ref: ModelRef) -> PullReport | MeshError:
        """A pull's whole life; its error is returned, not raised, so the TaskGroup lives on."""
        try:
            report = await self._pull_from_sources(ref)
        except MeshError as exc:
            self.counters["pull_failed"] += 1
            log.warning("pulling model %s failed: %s", ref, exc.message)
            return exc
        self.counters["pulled"] += 1
        return report

    async def _pull_from_sources(self, ref: ModelRef) -> PullReport:
        offers = self._offers()
        sources = choose_sources(ref, offers)
        if sources is None:
            known = sorted(
                {o.name if o.version is None else f"{o.name}:{o.version}" for o in offers}
            )
            raise ModelNotFound(
                f"no live peer serves model {str(ref)!r}, so there is nowhere to pull it from;"
                f" peers serve: {', '.join(known) or 'nothing'}"
            )
        started = time.monotonic()
        rejected: list[tuple[str, str]] = []
        for peer in sources.peers:
            try:
                info, spec = await self._copy_from(peer, ref, sources.sha256)
            except MeshError as exc:
                self.counters["copies_rejected"] += 1
                log.warning("model %s from %s refused: %s: %s", ref, peer, exc.code, exc.message)
                rejected.append((peer, f"{exc.code}: {exc.message}"))
                continue
            seconds = round(time.monotonic() - started, 3)
            log.info(
                "model %s version %s (%d bytes, sha256 %s) pulled from %s in %.3f s",
                spec.name,
                spec.version,
                info.size,
                spec.sha256[:12],
                peer,
                seconds,
            )
            return PullReport(
                spec.name, spec.version, spec.sha256, info.size, peer, seconds, tuple(rejected)
            )
        reasons = "; ".join(f"{peer}: {reason}" for peer, reason in rejected)
        raise ModelTransferFailed(
            f"no peer delivered a verified copy of model {str(ref)!r} "
            f"(sha256 {sources.sha256[:12]}): {reasons}"
        )

    async def _copy_from(
        self, peer: str, ref: ModelRef, sha256: str
    ) -> tuple[ModelFileInfo, ModelSpec]:
        connection = self._link(peer)
        if connection is None:
            raise ModelTransferFailed(f"no open link to {peer}")
        timeout = self._config.call_timeout_s
        answer = await connection.call(DESCRIBE, [{"sha256": sha256}], timeout=timeout)
        info, their_chunk = ModelFileInfo.from_wire(answer, sha256=sha256)
        if info.name != ref.name:
            raise ProtocolError(
                f"{peer} describes {sha256[:12]} as {info.name!r}, not {ref.name!r}"
            )
        assembly = Assembly(
            info,
            chunk_bytes=min(their_chunk, self._config.chunk_bytes),
            window=self._config.window,
        )
        path, handle = await asyncio.to_thread(self._open_part, info.name)
        try:
            try:
                await self._fetch_chunks(connection, assembly, handle)
            finally:
                await asyncio.to_thread(handle.close)
            assembly.verify()
            spec = await self._files.install(
                path, name=info.name, version=info.version or None, sha256=sha256
            )
        finally:
            # install moved it on success; anything left is a refused copy.
            await asyncio.to_thread(path.unlink, missing_ok=True)
        return info, spec

    async def _fetch_chunks(
        self, connection: RpcConnection, assembly: Assembly, handle: IO[bytes]
    ) -> None:
        """Keep ``window`` chunk calls in flight, write each in order as it lands."""
        timeout = self._config.call_timeout_s
        in_flight: deque[tuple[ChunkAsk, asyncio.Task[Any]]] = deque()
        try:
            while True:
                for ask in assembly.asks():
                    call = connection.call(CHUNK, ask.to_params(), timeout=timeout)
                    in_flight.append((ask, asyncio.ensure_future(call)))
                if not in_flight:
                    return
                ask, task = in_flight.popleft()
                data = await task
                if not isinstance(data, bytes):
                    raise ProtocolError(f"{CHUNK} answered {type(data).__name__}; expected bin")
                ready = assembly.feed(ask.offset, data)
                if ready:
                    await asyncio.to_thread(handle.writelines, ready)
        finally:
            for _, task in in_flight:
                task.cancel()
            # Awaited so that no call is left running behind a refused copy.
            await asyncio.gather(*(t for _, t in in_flight), return_exceptions=True)

    def _open_part(self, name: str) -> tuple[Path, IO[bytes]]:
        """A new hidden temporary file beside the models (OSError mapped to ModelError)."""
        directory = self._config.incoming_dir
        path = directory / f".{name}-{secrets.token_hex(6)}{_PART_SUFFIX}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return path, path.open("xb")
        except OSError as exc:
            raise ModelError(f"cannot write a model into {directory}: {exc.strerror}") from None

    # --- pushes from a client ------------------------------------------------------

    async def push_begin(self, connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
        """``model_push_begin``: open an upload; the id for its chunks and end."""
        begin = parse_push_begin(params)
        self._expire_uploads()
        if len(self._uploads) >= self._config.max_uploads:
            raise Overloaded(
                f"{len(self._uploads)} model uploads are already in progress here; "
                "push again when one has finished"
            )
        info = ModelFileInfo(begin.name, begin.version or "", begin.sha256, begin.size)
        assembly = Assembly(info, chunk_bytes=self._config.chunk_bytes, window=self._config.window)
        path, handle = await asyncio.to_thread(self._open_part, begin.name)
        upload_id = secrets.token_hex(8)
        self._uploads[upload_id] = _Upload(
            begin, assembly, path, handle, connection, touched=time.monotonic()
        )
        return {"upload": upload_id, "max_chunk_bytes": assembly.chunk_bytes}

    async def push_chunk(self, connection: RpcConnection, params: list[Any]) -> None:
        """``model_push_chunk``: one chunk of an upload (any order within the window)."""
        chunk = parse_push_chunk(params)
        upload = self._upload(chunk.upload, connection)
        upload.touched = time.monotonic()
        try:
            ready = upload.assembly.feed(chunk.offset, chunk.data)
        except MeshError:
            self._drop_upload(chunk.upload)
            raise
        # In feed order: the lock hands itself over first come, first served.
        async with upload.lock:
            if ready:
                await asyncio.to_thread(upload.handle.writelines, ready)

    async def push_end(self, connection: RpcConnection, params: list[Any]) -> dict[str, Any]:
        """``model_push_end``: verify the upload and serve it; the model as served."""
        upload_id = parse_push_end(params)
        upload = self._upload(upload_id, connection)
        try:
            async with upload.lock:
                await asyncio.to_thread(upload.handle.close)
            upload.assembly.verify()
            begin = upload.begin
            spec = await self._files.install(
                upload.path, name=begin.name, version=begin.version, sha256=begin.sha256
            )
        finally:
            self._drop_upload(upload_id)
        self.counters["pushed"] += 1
        log.info(
            "model %s version %s (sha256 %s) pushed by %s",
            spec.name,
            spec.version,
            spec.sha256[:12],
            connection.peer,
        )
        return {**spec.to_wire(), "size": begin.size}

    def _upload(self, upload_id: str, connection: RpcConnection) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.connection is not connection:
            raise BadRequest(
                f"no upload {upload_id} on this connection; start with model_push_begin"
            )
        return upload

    def _expire_uploads(self) -> None:
        now = time.monotonic()
        for upload_id, upload in list(self._uploads.items()):
            if upload.connection.closed or now - upload.touched > self._config.upload_idle_s:
                log.info("dropping the unfinished upload of model %s", upload.begin.name)
                self._drop_upload(upload_id)

    def _drop_upload(self, upload_id: str) -> None:
        upload = self._uploads.pop(upload_id, None)
        if upload is None:
            return
        # Small and local: closing and unlinking a file here beats a thread hop.
        with contextlib.suppress(OSError):
            upload.handle.close()
        upload.path.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        """Figures for ``status()``: pulls, refused copies, pushes, what is under way."""
        return {
            **self.counters,
            "pulling": sorted(str(ref) for ref in self._pulls),
            "uploads": len(self._uploads),
        }


def _read_span(path: Path, ask: ChunkAsk, max_chunk: int) -> bytes:
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        offset, length = chunk_span(
            ChunkAsk(ask.sha256, ask.offset, min(ask.length, max_chunk)), size
        )
        handle.seek(offset)
        return handle.read(length)


def _size_or_zero(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return path.stat().st_size
    except OSError:
        return 0
