"""Models travelling between nodes: serving a model's file in chunks, pulling one
from a peer, taking one pushed by a client.

The wire and every check live in :mod:`mesh.core.wire.model_transfer`; this
module does the I/O. A pull asks the peers that gossip the model (best first,
:func:`~mesh.core.policy.model_sources.choose_sources`) over the mesh links the
node already keeps, with a bounded window of chunk requests in flight, writes
the chunks in file order to a hidden temporary file beside the node's models,
and hands the file to the model store only once its size and sha256 are the
ones promised. A copy that fails (a peer gone, a short chunk, a wrong hash) is
thrown away and the next holder is asked; when none delivers, the caller gets
:class:`~mesh.errors.ModelTransferFailed` with every holder's reason. Pushes
from a client are :mod:`mesh.node.model_uploads`'.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mesh.config import RuntimeConfig
from mesh.core.models.signatures import ModelSpec
from mesh.core.policy.model_sources import Offer, choose_sources
from mesh.core.wire.model_transfer import (
    CHUNK,
    DESCRIBE,
    MAX_CHUNK_BYTES,
    PULL,
    PUSH_BEGIN,
    PUSH_CHUNK,
    PUSH_END,
    Assembly,
    ChunkAsk,
    ModelFileInfo,
    ModelRef,
    PullReport,
    chunk_span,
    parse_chunk,
    parse_describe,
    parse_pull,
)
from mesh.errors import (
    Forbidden,
    MeshError,
    ModelError,
    ModelNotFound,
    ModelTransferFailed,
    ProtocolError,
)
from mesh.node.membership import MeshMembership
from mesh.node.model_uploads import ModelFiles, TransferConfig, Uploads, open_part
from mesh.rpc import RpcConnection
from mesh.runtime.model_files import NO_MODEL_STORE, model_store_dir

if TYPE_CHECKING:  # the node imports this module; only types flow back
    from mesh.node.node import Node

__all__ = [
    "TRANSFER_PEER_METHODS",
    "ModelFiles",
    "ModelTransfer",
    "TransferConfig",
    "node_transfer",
    "offers_in",
    "transfer_methods",
]

log = logging.getLogger(__name__)

# Only a mesh node (role "node", mesh key) reads model files; the methods that
# change what a node serves need the mesh key too, in either role (see below).
TRANSFER_PEER_METHODS = frozenset({DESCRIBE, CHUNK})


class _InstallFailed(Exception):
    """A verified copy the store would not serve: said as it is, not retried elsewhere."""

    def __init__(self, error: MeshError) -> None:
        super().__init__(error.message)
        self.error = error


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
        self.uploads = Uploads(files, config)
        self._tasks: asyncio.TaskGroup | None = None
        self.counters = {"pulled": 0, "pull_failed": 0, "copies_rejected": 0}

    async def run(self) -> None:
        """Own the pulls started here until cancelled; then drop every unfinished copy."""
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await asyncio.Event().wait()
        finally:
            self._tasks = None
            self.uploads.close()

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
        if self._config.incoming_dir is None:
            raise ModelError(NO_MODEL_STORE)  # said before any peer is asked
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

    def asked_for(self, name: str) -> None:
        """A request for ``name`` came in: with ``--fetch-models``, see to having it here."""
        if not self._config.fetch or name in self._fetched:
            return
        # Only a model missing here: a newer version elsewhere is for `models pull`.
        if not any(spec.name == name for spec in self._files.holding()):
            self.fetch_in_background(name)

    def fetch_in_background(self, name: str) -> None:
        """Start pulling ``name`` if a live peer has it and it is not here, once per name."""
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
                info, spec, transfer_s = await self._copy_from(peer, ref, sources.sha256)
            except _InstallFailed as failed:
                raise failed.error from None
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
                spec.name,
                spec.version,
                spec.sha256,
                info.size,
                peer,
                seconds,
                round(transfer_s, 3),
                tuple(rejected),
            )
        reasons = "; ".join(f"{peer}: {reason}" for peer, reason in rejected)
        raise ModelTransferFailed(
            f"no peer delivered a verified copy of model {str(ref)!r} "
            f"(sha256 {sources.sha256[:12]}): {reasons}"
        )

    async def _copy_from(
        self, peer: str, ref: ModelRef, sha256: str
    ) -> tuple[ModelFileInfo, ModelSpec, float]:
        """One holder's copy, verified and installed; its description, the spec, the copy's time."""
        started = time.monotonic()
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
        path, handle = await asyncio.to_thread(open_part, self._config.incoming_dir, info.name)
        try:
            try:
                await self._fetch_chunks(connection, assembly, handle)
            finally:
                await asyncio.to_thread(handle.close)
            assembly.verify()
            transfer_s = time.monotonic() - started
            try:
                spec = await self._files.install(
                    path, name=info.name, version=info.version or None, sha256=sha256
                )
            except MeshError as exc:
                # The copy was good: another holder's would fail alike.
                raise _InstallFailed(exc) from exc
        finally:
            # install moved it on success; anything left is a refused copy.
            await asyncio.to_thread(path.unlink, missing_ok=True)
        return info, spec, transfer_s

    async def _fetch_chunks(
        self, connection: RpcConnection, assembly: Assembly, handle: IO[bytes]
    ) -> None:
        """Keep ``window`` chunk calls in flight, write each in order as it lands.

        Writing and hashing run on a worker thread, one chunk at a time, while
        the next chunk calls are already out: the copy is paced by the
        slower of the link and the disk, not by their sum.
        """
        timeout = self._config.call_timeout_s
        in_flight: deque[tuple[ChunkAsk, asyncio.Future[Any]]] = deque()
        writing: asyncio.Future[None] | None = None
        try:
            while True:
                for ask in assembly.asks():
                    call = connection.call(CHUNK, ask.to_params(), timeout=timeout)
                    in_flight.append((ask, asyncio.ensure_future(call)))
                if not in_flight:
                    break
                ask, task = in_flight.popleft()
                data = await task
                if not isinstance(data, bytes):
                    raise ProtocolError(f"{CHUNK} answered {type(data).__name__}; expected bin")
                ready = assembly.feed(ask.offset, data)
                if writing is not None:
                    await writing  # in order, and one chunk's bytes in a thread at a time
                writing = asyncio.ensure_future(
                    asyncio.to_thread(_write_and_absorb, assembly, ready, handle)
                )
            if writing is not None:
                await writing
        finally:
            calls = [t for _, t in in_flight]
            for task in calls:
                task.cancel()
            # Awaited so that no call is left running behind a refused copy, and
            # the last write (a thread: it cannot be cancelled) is over before
            # the file is closed.
            await asyncio.gather(
                *calls, *([] if writing is None else [writing]), return_exceptions=True
            )

    def status(self) -> dict[str, Any]:
        """Figures for ``status()``: pulls, refused copies, pushes, what is under way."""
        return {
            **self.counters,
            "pulling": sorted(str(ref) for ref in self._pulls),
            "pushed": self.uploads.pushed,
            "uploads": len(self.uploads),
        }


def transfer_methods(node: Node) -> tuple[dict[str, Any], dict[str, Any]]:
    """The inline and the concurrent methods of model transfer, for the node's method table.

    Each looks the node's transfer up when called: the table is built before it exists.
    """
    inline = {DESCRIBE: lambda c, p: node.transfer.describe(c, p)}
    concurrent = {
        CHUNK: lambda c, p: node.transfer.chunk(c, p),
        PULL: lambda c, p: node.transfer.pull_method(_mesh_key(c, PULL), p),
        PUSH_BEGIN: lambda c, p: node.transfer.uploads.begin(_mesh_key(c, PUSH_BEGIN), p),
        PUSH_CHUNK: lambda c, p: node.transfer.uploads.chunk(_mesh_key(c, PUSH_CHUNK), p),
        PUSH_END: lambda c, p: node.transfer.uploads.end(_mesh_key(c, PUSH_END), p),
    }
    return inline, concurrent


def _mesh_key(connection: RpcConnection, method: str) -> RpcConnection:
    """``connection``, unless its caller proved only a client key: Forbidden then.

    What a node serves is the mesh's to change: `edgemesh models pull/push`
    run with the mesh key (as a client or a node), as `drain` does.
    """
    if connection.by_client_key:
        raise Forbidden(f"{method} needs the mesh key; a client key cannot change a node's models")
    return connection


def offers_in(membership: MeshMembership | None) -> list[Offer]:
    """Every model version live peers say (in gossip) they serve."""
    if membership is None:
        return []
    return [
        Offer(member.name, held.name, held.version, held.sha256, member.load.queued_s)
        for member in membership.view.alive()
        for held in member.load.models
    ]


def node_transfer(node: Node, files: ModelFiles) -> ModelTransfer:
    """The transfer side of ``node``, configured from its settings."""
    config = node.config

    def link(peer: str) -> RpcConnection | None:
        membership = node.membership
        return None if membership is None else membership.link(peer)

    return ModelTransfer(
        files,
        TransferConfig(
            incoming_dir=_store_dir_or_none(config.runtime),
            # A chunk and its framing must fit in one message both ways.
            chunk_bytes=max(1, min(MAX_CHUNK_BYTES, config.rpc.max_message_bytes // 2)),
            call_timeout_s=config.rpc.call_timeout_s,
            fetch=config.fetch_models,
        ),
        offers=lambda: offers_in(node.membership),
        link=link,
    )


def _write_and_absorb(assembly: Assembly, ready: list[bytes], handle: IO[bytes]) -> None:
    handle.writelines(ready)
    assembly.absorb(ready)


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


def _store_dir_or_none(config: RuntimeConfig) -> Path | None:
    # None refuses pulls and pushes with the reason, when one is asked for.
    try:
        return model_store_dir(config)
    except ModelError:
        return None
