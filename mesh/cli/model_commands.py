"""``edgemesh models pull``, ``push`` and ``reload``: give a node a model, or make it look.

``pull NAME[:VERSION] --node HOST:PORT`` tells that node to fetch the model
from a peer that serves it (over the mesh link, verified before it loads)
and to serve it; ``push FILE --node HOST:PORT`` uploads a local ``.onnx`` file
to the node in chunks, which it verifies and serves. Both use the mesh key
(``--mesh-key-file`` or ``EDGEMESH_MESH_KEY``) like every client command.
``reload --node HOST:PORT`` makes the node rescan its model directories now
(as SIGHUP does) and prints what changed. The wire is
:mod:`mesh.core.wire.model_transfer` and the node's ``reload`` method.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.config import DEFAULT_RPC_PORT, RpcConfig, mesh_key_from
from mesh.core.models.signatures import check_model_name
from mesh.core.wire.addresses import parse_address
from mesh.core.wire.model_transfer import (
    DEFAULT_WINDOW,
    MAX_CHUNK_BYTES,
    MAX_MODEL_BYTES,
    PULL,
    PUSH_BEGIN,
    PUSH_CHUNK,
    PUSH_END,
    PushBegin,
    parse_model_ref,
)
from mesh.errors import BadRequest, ConfigError, ProtocolError
from mesh.rpc import RpcClient

# The node's method that rescans its model directories (mesh.node.rpc_face).
RELOAD = "reload"

__all__ = ["add_model_commands", "model_status_rows", "size_text"]


def add_model_commands(models: argparse.ArgumentParser) -> None:
    """Add ``pull``, ``push`` and ``reload`` under the ``edgemesh models`` parser."""
    actions = models.add_subparsers(title="actions", metavar="{pull,push,reload}")
    pull = actions.add_parser(
        "pull",
        help="make a node fetch a model from a peer and serve it",
        description=(
            "Tell the node to fetch a model from a live peer that serves it (the newest "
            "version unless NAME:VERSION pins one), over the mesh link, in chunks. The node "
            "checks the copy's sha256 before it loads it; a bad copy is thrown away and "
            "the next peer is asked. Prints where it came from, its size and the time."
        ),
    )
    pull.add_argument(
        "model", metavar="NAME[:VERSION]", help="the model, as `edgemesh models` lists it"
    )
    _add_flags(pull, timeout=300.0)
    pull.set_defaults(command="models pull", handler=_cmd_pull)

    push = actions.add_parser(
        "push",
        help="upload a local .onnx file to a node, which serves it",
        description=(
            "Upload an ONNX file to the node in chunks; the node checks its sha256, keeps it "
            "with its models as a new version and serves it."
        ),
    )
    push.add_argument("file", type=Path, metavar="FILE", help="the .onnx file")
    push.add_argument("--name", help="the model's name (default: the file's name without .onnx)")
    push.add_argument("--version", help="its version (default: the node numbers it)")
    _add_flags(push, timeout=300.0)
    push.set_defaults(command="models push", handler=_cmd_push)

    reload = actions.add_parser(
        "reload",
        help="make a node rescan its model directories now and say what changed",
        description=(
            "Ask the node to rescan its model directories now, as SIGHUP does: new files and "
            "versions start serving, removed ones retire once their requests are done, and a "
            "file that fails to load is reported while what served before keeps serving. "
            "Needs the mesh key on a keyed mesh (a client key cannot reload a node)."
        ),
    )
    _add_flags(reload, timeout=120.0)
    reload.set_defaults(command="models reload", handler=_cmd_reload)


def _add_flags(parser: argparse.ArgumentParser, *, timeout: float) -> None:
    # SUPPRESS: a flag given before the action (`models --node X pull M`)
    # reaches `models`' own parser, and must not be undone by a default here.
    parser.add_argument(
        "--node",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help=f"the node to give the model to (default: 127.0.0.1:{DEFAULT_RPC_PORT})",
    )
    parser.add_argument(
        "--mesh-key-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the mesh key (or set EDGEMESH_MESH_KEY)",
    )
    parser.add_argument(
        "--timeout",
        dest="transfer_timeout",
        type=float,
        default=timeout,
        metavar="SECONDS",
        help=f"how long to wait for the node to have the model (default: {timeout:g})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the node's answer as JSON",
    )


def _connect(args: argparse.Namespace, environ: Mapping[str, str]) -> RpcClient:
    if not args.transfer_timeout > 0:
        raise ConfigError(
            f"--timeout must be a positive number of seconds, got {args.transfer_timeout:g}"
        )
    try:
        host, port = parse_address(args.node, default_port=DEFAULT_RPC_PORT)
    except ValueError as exc:
        raise ConfigError(f"--node {args.node!r}: {exc}") from None
    key = mesh_key_from(key_file=args.mesh_key_file, environ=environ)
    return RpcClient(host, port, key=key, config=RpcConfig(call_timeout_s=args.transfer_timeout))


def size_text(size: int) -> str:
    """``size`` bytes as people read it (KiB, MiB)."""
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def model_status_rows(status: Mapping[str, Any]) -> list[list[object]]:
    """The model store's and model transfer's parts of ``status()``, as ``edgemesh status`` rows."""
    store = status.get("model_store") or {}
    transfer = status.get("transfer") or {}
    rows: list[list[object]] = []
    versions = store.get("versions") or {}
    if versions:
        said = [f"{name} {', '.join(labels)}" for name, labels in sorted(versions.items())]
        rows.append(["models.versions", "; ".join(said)])
    retiring = store.get("retiring") or []
    if retiring:
        said = [f"{m.get('name')} {m.get('version')}" for m in retiring]
        rows.append(["models.retiring", ", ".join(said)])
    for key, value in store.items():
        if key not in ("versions", "retiring"):
            rows.append([f"models.{key}", value])
    for key, value in transfer.items():
        shown = ", ".join(map(str, value)) or "none" if isinstance(value, list) else value
        rows.append([f"transfer.{key}", shown])
    return rows


# --- pull ------------------------------------------------------------------------


def _cmd_pull(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    try:
        ref = parse_model_ref(args.model)
    except BadRequest as exc:
        raise ConfigError(exc.message) from None

    async def run() -> Any:
        async with _connect(args, environ) as client:
            return await client.call(PULL, ref.to_params(), timeout=args.transfer_timeout)

    answer = asyncio.run(run())
    if not isinstance(answer, dict):
        raise ProtocolError(f"{PULL} answered {type(answer).__name__}; expected a map")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for refused in answer.get("rejected") or ():
        print(f"copy from {refused.get('peer')} refused: {refused.get('reason')}")
    what = f"{answer.get('name')} version {answer.get('version')}"
    sha = str(answer.get("sha256", ""))[:12]
    if answer.get("source") is None:
        print(f"{args.node} already serves {what} (sha256 {sha})")
        return 0
    size = int(answer.get("size", 0))
    seconds = float(answer.get("seconds", 0.0))
    print(
        f"{args.node} now serves {what}: {size_text(size)} (sha256 {sha}) "
        f"from {answer.get('source')} in {seconds:.2f} s"
    )
    return 0


# --- reload ----------------------------------------------------------------------


def _cmd_reload(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    async def run() -> Any:
        async with _connect(args, environ) as client:
            return await client.call(RELOAD, [], timeout=args.transfer_timeout)

    answer = asyncio.run(run())
    if not isinstance(answer, dict):
        raise ProtocolError(f"{RELOAD} answered {type(answer).__name__}; expected a map")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for verb, key in (("serves", "added"), ("retires", "retired")):
        for model in answer.get(key) or ():
            sha = str(model.get("sha256", ""))[:12]
            print(f"{args.node} {verb} {model.get('name')} version {model.get('version')} ({sha})")
    for failure in answer.get("failed") or ():
        print(f"{args.node} cannot serve {failure.get('path')}: {failure.get('error')}")
    if not any(answer.get(key) for key in ("added", "retired", "failed")):
        print(f"{args.node}: no change in its model directories")
    # A file that would not load is worth a non-zero status to a script.
    return 1 if answer.get("failed") else 0


# --- push ------------------------------------------------------------------------


def _file_facts(path: Path) -> tuple[int, str]:
    """Size and sha256 of ``path``; ConfigError naming FILE if it cannot be read or used."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(MAX_CHUNK_BYTES):
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not 0 < size <= MAX_MODEL_BYTES:
        raise ConfigError(f"{path} holds {size} bytes; a model must hold 1..{MAX_MODEL_BYTES}")
    return size, digest.hexdigest()


def _cmd_push(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    path: Path = args.file
    name = args.name if args.name is not None else path.stem
    try:
        check_model_name(name)
    except ConfigError as exc:
        raise ConfigError(f"--name: {exc.message}") from None
    size, sha256 = _file_facts(path)
    begin = PushBegin(name, args.version, sha256, size)

    async def run() -> Any:
        async with _connect(args, environ) as client:
            return await push_file(client, path, begin, timeout=args.transfer_timeout)

    started = time.monotonic()
    answer = asyncio.run(run())
    seconds = time.monotonic() - started
    if not isinstance(answer, dict):
        raise ProtocolError(f"{PUSH_END} answered {type(answer).__name__}; expected a map")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(
        f"{args.node} now serves {answer.get('name')} version {answer.get('version')}: "
        f"{size_text(size)} (sha256 {sha256[:12]}) pushed in {seconds:.2f} s"
    )
    return 0


async def push_file(
    client: RpcClient, path: Path, begin: PushBegin, *, timeout: float, window: int = DEFAULT_WINDOW
) -> Any:
    """Upload ``path`` as ``begin`` describes it, ``window`` chunks in flight; the node's answer."""
    opened = await client.call(PUSH_BEGIN, begin.to_params(), timeout=timeout)
    if not isinstance(opened, dict) or not isinstance(opened.get("upload"), str):
        raise ProtocolError(f"{PUSH_BEGIN} answered {opened!r:.80}; expected an upload id")
    upload = opened["upload"]
    chunk_bytes = opened.get("max_chunk_bytes", MAX_CHUNK_BYTES)
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ProtocolError(f"{PUSH_BEGIN} gave max_chunk_bytes {chunk_bytes!r}")
    chunk_bytes = min(chunk_bytes, MAX_CHUNK_BYTES)
    in_flight: deque[asyncio.Future[Any]] = deque()
    try:
        with path.open("rb") as handle:
            offset = 0
            while data := handle.read(chunk_bytes):
                params = [{"upload": upload, "offset": offset, "data": data}]
                in_flight.append(
                    asyncio.ensure_future(client.call(PUSH_CHUNK, params, timeout=timeout))
                )
                offset += len(data)
                if len(in_flight) >= window:
                    await in_flight.popleft()
        while in_flight:
            await in_flight.popleft()
    finally:
        for call in in_flight:
            call.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    return await client.call(PUSH_END, [{"upload": upload}], timeout=timeout)
