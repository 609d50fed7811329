"""Models travelling between nodes: the transfer methods' messages, checked, and
:class:`Assembly`, which turns chunks into a verified file.

A model is named on the wire by its sha256 (the version a node serves is that
file, byte for byte). The methods, all between callers that passed the
mesh-key handshake:

* ``model_describe([{"sha256": S}])`` → ``{"name", "version", "sha256", "size",
  "max_chunk_bytes"}``: what the holder will send (ModelNotFound if it holds no
  such file);
* ``model_chunk([{"sha256": S, "offset": O, "length": L}])`` → the file's bytes
  ``[O, O + min(L, size - O))`` as msgpack bin; ``L`` is at most
  :data:`MAX_CHUNK_BYTES`;
* ``model_pull([{"name": N, "version": V?}])`` → the node fetches the model
  from a peer that holds it, verifies it and serves it; the answer says from
  where, how big and how long (:class:`PullReport`);
* ``model_push_begin([{"name", "version"?, "sha256", "size"}])`` →
  ``{"upload": ID, "max_chunk_bytes": C}``, then ``model_push_chunk([{"upload":
  ID, "offset": O, "data": bin}])`` for every chunk (any order within a
  window), then ``model_push_end([{"upload": ID}])`` → the model as served.

The receiving side, puller or pushed-to node alike, feeds chunks to an
:class:`Assembly`: it checks each chunk's offset and length, hashes the bytes
in file order (chunks that arrive early wait in a buffer bounded by the
window), and :meth:`Assembly.verify` refuses a copy whose size or sha256 is
not the one promised. Nothing loads a file that has not passed it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from mesh.core.models.signatures import check_model_name
from mesh.errors import BadRequest, ConfigError, ModelIntegrityError, ProtocolError

__all__ = [
    "CHUNK",
    "DEFAULT_WINDOW",
    "DESCRIBE",
    "MAX_CHUNK_BYTES",
    "MAX_MODEL_BYTES",
    "MAX_WINDOW",
    "PULL",
    "PUSH_BEGIN",
    "PUSH_CHUNK",
    "PUSH_END",
    "Assembly",
    "ChunkAsk",
    "ModelFileInfo",
    "ModelRef",
    "PullReport",
    "PushBegin",
    "PushChunk",
    "check_sha256",
    "chunk_span",
    "parse_describe",
    "parse_model_ref",
    "parse_pull",
    "parse_push_begin",
    "parse_push_chunk",
    "parse_push_end",
]

DESCRIBE = "model_describe"
CHUNK = "model_chunk"
PULL = "model_pull"
PUSH_BEGIN = "model_push_begin"
PUSH_CHUNK = "model_push_chunk"
PUSH_END = "model_push_end"

# One chunk per message: big enough that per-message costs vanish, small
# enough to stay far below any sane --max-message-bytes and to keep a
# window's worth of chunks in memory on a small device.
MAX_CHUNK_BYTES = 1024 * 1024
# Chunk requests a puller keeps in flight: enough to cover a LAN round trip
# at gigabit speed, few enough to bound memory at window x chunk.
DEFAULT_WINDOW = 4
MAX_WINDOW = 64
# The largest model a node accepts from a peer or a client.
MAX_MODEL_BYTES = 8 * 1024 * 1024 * 1024
# Version labels: what a model directory's version folder may be called.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_UPLOAD_RE = re.compile(r"[0-9a-f]{8,64}")


def check_sha256(value: object, where: str) -> str:
    """``value`` if it is a sha256 in lower-case hex, else BadRequest naming ``where``."""
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise BadRequest(f"{where}: sha256 must be 64 lower-case hex digits, got {value!r:.80}")
    return value


def _check_version(value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _VERSION_RE.fullmatch(value):
        raise BadRequest(
            f"{where}: version must be 1-32 letters, digits, '.', '_' or '-', got {value!r:.80}"
        )
    return value


def _check_name(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: name must be a string, got {type(value).__name__}")
    try:
        check_model_name(value)
    except ConfigError as exc:
        raise BadRequest(f"{where}: {exc.message}") from None
    return value


def _count(value: object, where: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{where} must be an integer in {low}..{high}, got {value!r:.80}")
    return value


def _one_map(method: str, params: list[Any], keys: frozenset[str]) -> dict[str, Any]:
    """The single map parameter of ``method``, with no key outside ``keys``."""
    if len(params) != 1 or not isinstance(params[0], dict):
        raise BadRequest(f"{method} takes one map parameter, got {len(params)} params")
    body: dict[str, Any] = params[0]
    unknown = set(body) - keys
    if unknown:
        raise BadRequest(
            f"{method}: unknown keys {sorted(map(str, unknown))}; known: {sorted(keys)}"
        )
    return body


# --- what a holder says about a file -------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelFileInfo:
    """One version of a model as a file: what ``model_describe`` answers."""

    name: str
    version: str
    sha256: str
    size: int

    def to_wire(self, max_chunk_bytes: int = MAX_CHUNK_BYTES) -> dict[str, Any]:
        """``model_describe``'s answer."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "max_chunk_bytes": max_chunk_bytes,
        }

    @classmethod
    def from_wire(cls, body: object, *, sha256: str) -> tuple[ModelFileInfo, int]:
        """A holder's ``model_describe`` answer, checked against the ``sha256`` asked for,
        with the largest chunk it serves; ProtocolError if it is not one."""
        if not isinstance(body, dict):
            raise ProtocolError(f"{DESCRIBE} answered {type(body).__name__}; expected a map")
        try:
            info = cls(
                name=_check_name(body.get("name"), DESCRIBE),
                version=_check_version(body.get("version"), DESCRIBE) or "",
                sha256=check_sha256(body.get("sha256"), DESCRIBE),
                size=_count(body.get("size"), f"{DESCRIBE}: size", low=1, high=MAX_MODEL_BYTES),
            )
            chunk = _count(
                body.get("max_chunk_bytes", MAX_CHUNK_BYTES),
                f"{DESCRIBE}: max_chunk_bytes",
                low=1,
                high=MAX_CHUNK_BYTES,
            )
        except BadRequest as exc:
            raise ProtocolError(exc.message) from None
        if info.sha256 != sha256:
            raise ProtocolError(f"{DESCRIBE} for {sha256[:12]} described {info.sha256[:12]}")
        return info, chunk


def parse_describe(params: list[Any]) -> str:
    """``model_describe``'s sha256."""
    body = _one_map(DESCRIBE, params, frozenset({"sha256"}))
    return check_sha256(body.get("sha256"), DESCRIBE)


# --- chunks --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkAsk:
    """``model_chunk``'s parameters: bytes ``[offset, offset + length)`` of file ``sha256``."""

    sha256: str
    offset: int
    length: int

    def to_params(self) -> list[Any]:
        """The call's params."""
        return [{"sha256": self.sha256, "offset": self.offset, "length": self.length}]


def parse_chunk(params: list[Any]) -> ChunkAsk:
    """``model_chunk``'s parameters, checked (BadRequest)."""
    body = _one_map(CHUNK, params, frozenset({"sha256", "offset", "length"}))
    return ChunkAsk(
        sha256=check_sha256(body.get("sha256"), CHUNK),
        offset=_count(body.get("offset"), f"{CHUNK}: offset", low=0, high=MAX_MODEL_BYTES),
        length=_count(body.get("length"), f"{CHUNK}: length", low=1, high=MAX_CHUNK_BYTES),
    )


def chunk_span(ask: ChunkAsk, size: int) -> tuple[int, int]:
    """``(offset, length)`` to read of a file of ``size`` bytes; BadRequest past its end."""
    if ask.offset >= size:
        raise BadRequest(
            f"{CHUNK}: offset {ask.offset} is past the end of {ask.sha256[:12]} ({size} bytes)"
        )
    return ask.offset, min(ask.length, size - ask.offset)


class Assembly:
    """The receiving side of one transfer: chunks in, verified bytes out, in file order.

    ``feed`` takes a chunk at an ``offset`` that is a multiple of
    ``chunk_bytes`` within ``window`` chunks of what is already released, of
    exactly the expected length, and returns the bytes now ready to write,
    in order. Whoever writes them hands them to :meth:`absorb`, which hashes
    them (the costly part, so it may run on a worker thread while the next
    chunks arrive: one call at a time, in the order ``feed`` released them).
    A puller asks for chunks with :meth:`asks`. :meth:`verify` checks the
    size and the sha256 once everything is absorbed. Memory is bounded: at
    most ``window`` chunks wait for an earlier one.
    """

    def __init__(self, info: ModelFileInfo, *, chunk_bytes: int, window: int) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in 1..{MAX_CHUNK_BYTES}, got {chunk_bytes}")
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"window must be in 1..{MAX_WINDOW}, got {window}")
        self.info = info
        self.chunk_bytes = chunk_bytes
        self.window = window
        self._hash = hashlib.sha256()
        self.written = 0  # bytes released in order by feed
        self._hashed = 0  # bytes absorbed (hashed)
        self._next_ask = 0  # the next offset asks() hands out
        self._waiting: dict[int, bytes] = {}  # early chunks, by offset
        self._asked: set[int] = set()  # offsets asked for and not yet fed

    @property
    def complete(self) -> bool:
        """Whether every byte has been fed and released."""
        return self.written == self.info.size

    def asks(self) -> list[ChunkAsk]:
        """The next chunks to request, keeping at most ``window`` outstanding."""
        found: list[ChunkAsk] = []
        size = self.info.size
        while self._next_ask < size and len(self._asked) + len(self._waiting) < self.window:
            offset = self._next_ask
            length = min(self.chunk_bytes, size - offset)
            self._asked.add(offset)
            self._next_ask += length
            found.append(ChunkAsk(self.info.sha256, offset, length))
        return found

    def feed(self, offset: int, data: bytes) -> list[bytes]:
        """Take the chunk at ``offset``; the bytes now writable, in order.

        ModelIntegrityError for a chunk of the wrong length (a truncated or
        padded file on the sending side); BadRequest for an offset that is
        misaligned, outside the window, or given twice.
        """
        size = self.info.size
        limit = self.written + self.window * self.chunk_bytes
        if (
            offset % self.chunk_bytes
            or not self.written <= offset < min(size, limit)
            or offset in self._waiting
        ):
            raise BadRequest(
                f"chunk at offset {offset} of {self.info.sha256[:12]} was not expected "
                f"(written {self.written} of {size} bytes, chunks of {self.chunk_bytes}, "
                f"window {self.window})"
            )
        expected = min(self.chunk_bytes, size - offset)
        if len(data) != expected:
            raise ModelIntegrityError(
                f"chunk at offset {offset} of {self.info.name} ({self.info.sha256[:12]}) "
                f"holds {len(data)} bytes; expected {expected}: the sender's file is not "
                f"the {size} bytes it described"
            )
        self._asked.discard(offset)
        self._waiting[offset] = data
        ready: list[bytes] = []
        while self.written in self._waiting:
            piece = self._waiting.pop(self.written)
            self.written += len(piece)
            ready.append(piece)
        return ready

    def absorb(self, pieces: list[bytes]) -> None:
        """Hash ``pieces``, as :meth:`feed` released them (in order, one call at a time)."""
        for piece in pieces:
            self._hash.update(piece)
            self._hashed += len(piece)

    def verify(self) -> None:
        """ModelIntegrityError unless the bytes fed are the promised size and sha256."""
        info = self.info
        if not self.complete or self._hashed != info.size:
            raise ModelIntegrityError(
                f"{info.name} ({info.sha256[:12]}): got {self._hashed} of {info.size} bytes"
            )
        actual = self._hash.hexdigest()
        if actual != info.sha256:
            raise ModelIntegrityError(
                f"{info.name}: the bytes received hash to sha256 {actual[:12]}, "
                f"not the {info.sha256[:12]} promised; the copy is rejected"
            )


# --- pull and push -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``NAME`` or ``NAME:VERSION``: a model, and optionally one version of it."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"

    def to_params(self) -> list[Any]:
        """``model_pull``'s params."""
        body: dict[str, Any] = {"name": self.name}
        if self.version is not None:
            body["version"] = self.version
        return [body]


def parse_model_ref(text: str) -> ModelRef:
    """``NAME[:VERSION]`` as a user types it; BadRequest says what is wrong."""
    name, _, version = text.partition(":")
    where = f"model {text!r:.80}"
    return ModelRef(_check_name(name, where), _check_version(version or None, where))


def parse_pull(params: list[Any]) -> ModelRef:
    """``model_pull``'s parameters."""
    body = _one_map(PULL, params, frozenset({"name", "version"}))
    return ModelRef(_check_name(body.get("name"), PULL), _check_version(body.get("version"), PULL))


@dataclass(frozen=True, slots=True)
class PullReport:
    """What ``model_pull`` answers: the model now served, where it came from, how long it took."""

    name: str
    version: str
    sha256: str
    size: int
    # The peer it came from; None when the node already served it.
    source: str | None
    # The whole pull: refused copies, the good copy, its verification and loading.
    seconds: float
    # The good copy alone: describe, chunks and sha256 check, not the loading.
    transfer_s: float = 0.0
    # Holders that were tried first and why each copy was refused.
    rejected: tuple[tuple[str, str], ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """The answer's map."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "seconds": self.seconds,
            "transfer_s": self.transfer_s,
            "rejected": [{"peer": peer, "reason": reason} for peer, reason in self.rejected],
        }


@dataclass(frozen=True, slots=True)
class PushBegin:
    """``model_push_begin``'s parameters: the file a client is about to send."""

    name: str
    version: str | None
    sha256: str
    size: int

    def to_params(self) -> list[Any]:
        """The call's params."""
        body: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "size": self.size}
        if self.version is not None:
            body["version"] = self.version
        return [body]


def parse_push_begin(params: list[Any]) -> PushBegin:
    """``model_push_begin``'s parameters."""
    body = _one_map(PUSH_BEGIN, params, frozenset({"name", "version", "sha256", "size"}))
    return PushBegin(
        name=_check_name(body.get("name"), PUSH_BEGIN),
        version=_check_version(body.get("version"), PUSH_BEGIN),
        sha256=check_sha256(body.get("sha256"), PUSH_BEGIN),
        size=_count(body.get("size"), f"{PUSH_BEGIN}: size", low=1, high=MAX_MODEL_BYTES),
    )


@dataclass(frozen=True, slots=True)
class PushChunk:
    """``model_push_chunk``'s parameters."""

    upload: str
    offset: int
    data: bytes


def _upload_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _UPLOAD_RE.fullmatch(value):
        raise BadRequest(f"{where}: upload must be the id model_push_begin gave, got {value!r:.80}")
    return value


def parse_push_chunk(params: list[Any]) -> PushChunk:
    """``model_push_chunk``'s parameters."""
    body = _one_map(PUSH_CHUNK, params, frozenset({"upload", "offset", "data"}))
    data = body.get("data")
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_CHUNK_BYTES:
        raise BadRequest(f"{PUSH_CHUNK}: data must be 1..{MAX_CHUNK_BYTES} bytes (msgpack bin)")
    return PushChunk(
        upload=_upload_id(body.get("upload"), PUSH_CHUNK),
        offset=_count(body.get("offset"), f"{PUSH_CHUNK}: offset", low=0, high=MAX_MODEL_BYTES),
        data=data,
    )


def parse_push_end(params: list[Any]) -> str:
    """``model_push_end``'s upload id."""
    body = _one_map(PUSH_END, params, frozenset({"upload"}))
    return _upload_id(body.get("upload"), PUSH_END)
