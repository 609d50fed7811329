"""The client commands of the command line: ``infer``, ``models`` and ``status``.

Each talks to one running node through the SDK and prints what it says, as a
table for people or, with ``--json``, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mesh.cli.escalation_text import escalation_line, escalation_rows
from mesh.cli.model_commands import model_status_rows
from mesh.config import DEFAULT_RPC_PORT, mesh_key_from
from mesh.errors import ConfigError, InvalidInput, ModelNotFound
from mesh.sdk.client import Inference, MeshClient, MeshModels, ModelInfo

__all__ = ["add_client_commands", "format_table", "load_inputs", "status_text"]


def add_client_commands(commands: Any) -> None:
    """Add ``infer``, ``models`` and ``status`` to the ``edgemesh`` subcommands."""
    infer = commands.add_parser(
        "infer",
        help="run one inference on a node and print the outputs",
        description=(
            "Send inputs from .npy/.npz files to a node and print the outputs and where the "
            "request ran (the node, a peer that took it, or the cloud gateway). Make inputs "
            "with numpy: np.save('x.npy', np.zeros((1, 64), np.float32))."
        ),
    )
    _add_client_flags(infer)
    infer.add_argument("--model", required=True, help="model name, as `edgemesh models` lists")
    infer.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[NAME=]FILE",
        help="a .npy file for input NAME (NAME may be left out for one-input models), "
        "or a .npz file whose arrays are named after the inputs (repeatable)",
    )
    infer.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="the mesh's time for this request: it hands to the gateway what it cannot finish "
        "in time, and gives up with DeadlineExceeded once it passes (default: none; the node's "
        "--default-deadline-ms judges gateway hand-overs)",
    )
    infer.add_argument(
        "--no-escalate",
        dest="escalate",
        action="store_const",
        const=False,
        help="for a model with an escalation rule: keep the edge model's answer",
    )
    infer.add_argument(
        "--escalate-threshold",
        type=float,
        metavar="P",
        help="for a model with an escalation rule: escalate the rows whose top probability "
        "is below P instead of the rule's threshold (0: none; above 1: all)",
    )
    infer.add_argument(
        "--version",
        metavar="VERSION",
        help="run this version of the model and no other (default: the newest in the mesh)",
    )
    infer.add_argument("--json", action="store_true", help="print the outputs as JSON")
    infer.set_defaults(command="infer", handler=_cmd_infer)

    models = commands.add_parser(
        "models",
        help="list the models a node can serve, and where each is",
        description=(
            "List every model the node can route a request to, and where it is: on that node "
            "(here), on a live peer (peer NAME) or on its gateway. With --local, only the "
            "node's own models, with each input and output's name, dtype and shape "
            "(-1: any size), as `edgemesh infer` and the SDK expect them."
        ),
    )
    _add_client_flags(models)
    models.add_argument(
        "--local",
        action="store_true",
        help="only the node's own models, with their inputs and outputs",
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(command="models", handler=_cmd_models)

    status = commands.add_parser(
        "status",
        help="show a node's status",
        description=(
            "Show a node's status: its peers and their state, its queue, what it ran, stole "
            "and handed to the gateway, and the gateway's circuit breaker."
        ),
    )
    _add_client_flags(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(command="status", handler=_cmd_status)


def _add_client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node",
        default=f"127.0.0.1:{DEFAULT_RPC_PORT}",
        metavar="HOST:PORT",
        help=f"the node to ask (default: 127.0.0.1:{DEFAULT_RPC_PORT})",
    )
    parser.add_argument(
        "--mesh-key-file", metavar="FILE", help="the mesh key (or set EDGEMESH_MESH_KEY)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long this command waits for the node's answer, failovers included, "
        "before giving up with RpcTimeout (default: 30; for infer, at least --deadline "
        "plus 1 s); unlike --deadline, the mesh never sees it",
    )


# --- client commands ----------------------------------------------------------


def _client(args: argparse.Namespace, environ: Mapping[str, str]) -> MeshClient:
    _check_seconds("--timeout", args.timeout)
    key = mesh_key_from(key_file=args.mesh_key_file, environ=environ)
    return MeshClient(args.node, mesh_key=key, timeout=args.timeout)


def _cmd_models(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    if not args.local:
        return _mesh_models(args, environ)

    async def run() -> list[ModelInfo]:
        async with _client(args, environ) as client:
            return await client.models()

    models = asyncio.run(run())
    if args.json:
        print(json.dumps([_model_json(m) for m in models], indent=2))
        return 0
    rows = [
        [
            m.name,
            *_signature_cells(m),
            "compute-only"
            if m.compute_only
            else ("" if m.accuracy is None else f"{m.accuracy:.4f}"),
            m.sha256[:12],
        ]
        for m in models
    ]
    print(format_table(["model", "version", "inputs", "outputs", "accuracy", "sha256"], rows))
    return 0


def _signature_cells(model: ModelInfo) -> list[str]:
    """Version, inputs and outputs, as the table shows them."""
    return [
        model.version,
        ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in model.inputs),
        ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in model.outputs),
    ]


def _mesh_models(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """``edgemesh models``: one row per model and place (here, peer NAME, gateway)."""

    async def run() -> MeshModels:
        async with _client(args, environ) as client:
            return await client.mesh_models()

    models = asyncio.run(run())
    if args.json:
        entries = [
            {
                **({} if m.info is None else _model_json(m.info)),
                "name": m.name,
                "sha256": m.sha256,
                "where": m.where,
                "node": m.node,
            }
            for m in models
        ]
        gateway = (
            None
            if models.gateway is None
            else {"url": models.gateway, "error": models.gateway_error}
        )
        print(json.dumps({"models": entries, "gateway": gateway}, indent=2))
        return 0
    # Signatures only for the node's own models: gossip carries names and checksums.
    rows = [
        [
            m.name,
            {"here": "here", "peer": f"peer {m.node}", "gateway": "gateway"}[m.where],
            *(["", "", ""] if m.info is None else _signature_cells(m.info)),
            "" if m.sha256 is None else m.sha256[:12],
        ]
        for m in models
    ]
    header = ["model", "where", "version", "inputs", "outputs", "sha256"]
    print(format_table(header, rows))
    if models.gateway is not None and models.gateway_error is not None:
        print(f"\ngateway {models.gateway}: its models are unknown ({models.gateway_error})")
    return 0


def _model_json(model: ModelInfo) -> dict[str, Any]:
    def tensor(t: Any) -> dict[str, Any]:
        return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}

    return {
        "name": model.name,
        "version": model.version,
        "sha256": model.sha256,
        "inputs": [tensor(t) for t in model.inputs],
        "outputs": [tensor(t) for t in model.outputs],
        "description": model.description,
        "accuracy": model.accuracy,
        "compute_only": model.compute_only,
    }


def _cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    async def run() -> dict[str, Any]:
        async with _client(args, environ) as client:
            return await client.status()

    status = asyncio.run(run())
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(status_text(status))
    return 0


def status_text(status: Mapping[str, Any]) -> str:
    """``status()`` for people: the node, its queue, its counters, then one row per peer."""
    counters = status.get("counters", {})
    rows: list[list[object]] = [
        ["name", status.get("name")],
        ["id", status.get("id")],
        ["version", status.get("version")],
        ["mesh", _mesh_text(status)],
        ["models", ", ".join(status.get("models", []))],
        ["uptime", f"{status.get('uptime_s', 0):.1f} s"],
        ["http", (status.get("http") or {}).get("port") or "off"],
        ["gateway", _gateway_text(status.get("gateway"))],
        *_queue_rows(status.get("scheduler") or {}),
        *[[f"counters.{k}", v] for k, v in counters.items()],
        *escalation_rows(status.get("escalation") or {}),
        *model_status_rows(status),
    ]
    parts = [format_table(["field", "value"], rows), ""]
    peers = status.get("peers", [])
    if not peers:
        parts.append("no peers known")
        return "\n".join(parts)
    activity = status.get("steal_activity") or {}
    header = ["peer", "state", "address", "models", "queued s", "free"]
    header += ["stolen out", "stolen in", "rtt ms", "heard"]
    parts.append(
        format_table(
            header,
            [
                [
                    p.get("name"),
                    p.get("state"),
                    p.get("address"),
                    ", ".join(p.get("models", [])),
                    f"{p.get('queued_s', 0):.3f}",
                    p.get("free_slots", ""),
                    *_steal_cells(activity.get(p.get("name")) or {}),
                    f"{p.get('last_heard_s', 0):.1f} s ago",
                ]
                for p in peers
            ],
        )
    )
    parts.append("stolen out: our requests this peer took to run; stolen in: its requests we took")
    return "\n".join(parts)


def _mesh_text(status: Mapping[str, Any]) -> str:
    if status.get("auth"):
        return f"{status.get('mesh_id')} (mesh key required)"
    return "open: no mesh key, anyone who can reach this node may use it"


def _queue_rows(scheduler: Mapping[str, Any]) -> list[list[object]]:
    """The scheduler's queue as rows; none for a node not serving yet."""
    if not scheduler:
        return []
    wait = scheduler.get("wait_ms")
    return [
        ["queue.queued", scheduler.get("queued")],
        ["queue.running", scheduler.get("running")],
        ["queue.free_slots", f"{scheduler.get('free_slots')} of {scheduler.get('slots')}"],
        ["queue.wait", "" if wait is None else f"{wait:.1f} ms"],
        ["queue.stealing", "on" if scheduler.get("stealing") else "off (--no-steal)"],
    ]


def _steal_cells(activity: Mapping[str, Any]) -> list[object]:
    """Stolen out, stolen in and round-trip time with one peer (blank before any exchange)."""
    if not activity:
        return ["", "", ""]
    rtt = activity.get("rtt_ms")
    return [
        activity.get("stolen_by_peer", 0),
        activity.get("stolen_from_peer", 0),
        "" if rtt is None else f"{rtt:.1f}",
    ]


def _gateway_text(gateway: dict[str, Any] | None) -> str:
    if not gateway:
        return "none"
    text = f"{gateway.get('url')}, circuit {gateway.get('state')}"
    if gateway.get("last_failure"):
        text += f" (last failure: {gateway['last_failure']})"
    return text


def _check_seconds(flag: str, value: float | None) -> None:
    """ConfigError naming ``flag`` unless ``value`` is None or a positive number of seconds."""
    if value is not None and not value > 0:
        raise ConfigError(f"{flag} must be a positive number of seconds, got {value:g}")


def _cmd_infer(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # Checked before any connection: a deadline already passed would
    # otherwise surface as a DeadlineExceeded about a failover never made.
    _check_seconds("--deadline", args.deadline)

    async def run() -> Inference:
        async with _client(args, environ) as client:
            models = await client.models()
            if _needs_signature(args.input) and not any(m.name == args.model for m in models):
                models = await _models_elsewhere(client, args, environ)
            inputs = load_inputs(args.input, models, args.model)
            return await client.infer(
                args.model,
                inputs,
                deadline=args.deadline,
                escalate=args.escalate,
                escalate_threshold=args.escalate_threshold,
                version=args.version,
            )

    outputs = asyncio.run(run())
    if args.json:
        print(
            json.dumps(
                {
                    "outputs": {name: array.tolist() for name, array in outputs.items()},
                    "ran_on": outputs.ran_on,
                    **({} if outputs.escalation is None else {"escalation": outputs.escalation}),
                }
            )
        )
        return 0
    for name, array in outputs.items():
        print(f"{name}: {array.dtype} {list(array.shape)}")
        print(np.array2string(array, threshold=200, precision=4, suppress_small=True))
    print(f"ran on: {outputs.ran_on}")
    if outputs.escalation is not None:
        print(f"escalation: {escalation_line(outputs.escalation)}")
    return 0


def _needs_signature(specs: Sequence[str]) -> bool:
    """Whether some ``--input`` leaves its input's name to be found in the model's signature."""
    return any("=" not in spec and not spec.endswith(".npz") for spec in specs)


async def _models_elsewhere(
    client: MeshClient, args: argparse.Namespace, environ: Mapping[str, str]
) -> list[ModelInfo]:
    """The models of a live peer that holds ``args.model``, when the node asked has not got it.

    ModelNotFound, listing what the mesh has, when no peer holds it and the
    node has no gateway to ask: the node would say the same, and a guess at
    input names must not hide it. With a gateway, nothing is known here of
    the gateway's models: an empty list (load_inputs then asks for NAME=).
    """
    status = await client.status()
    peers = [p for p in status.get("peers", []) if p.get("state") == "alive"]
    holders = [p for p in peers if args.model in p.get("models", [])]
    if holders:
        key = mesh_key_from(key_file=args.mesh_key_file, environ=environ)
        async with MeshClient(holders[0]["address"], mesh_key=key, timeout=args.timeout) as peer:
            return await peer.models()
    if status.get("gateway"):
        return []
    known = {*status.get("models", []), *(m for p in peers for m in p.get("models", []))}
    available = ", ".join(f"'{m}'" for m in sorted(known)) or "none"
    raise ModelNotFound(
        f"no node in the mesh serves model '{args.model}'; available models: {available}"
    )


# What every .npy and .npz file starts with (a .npz is a zip archive).
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _load_array_file(path: Path) -> Any:
    """``np.load`` of a .npy or .npz file; InvalidInput for anything else, never unpickled."""
    try:
        with path.open("rb") as file:
            head = file.read(len(_NPY_MAGIC))
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head.startswith((_NPY_MAGIC, _ZIP_MAGIC)):
        # np.load would suggest allow_pickle, which would run the file's code.
        raise InvalidInput(
            f"{path} is not a .npy or .npz file; write inputs with numpy: "
            "np.save('x.npy', array) or np.savez('x.npz', NAME=array)"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        if "allow_pickle" in str(exc):
            raise InvalidInput(
                f"{path} holds Python objects, which edgemesh never unpickles; save a numeric array"
            ) from None
        raise InvalidInput(f"cannot read {path} as .npy or .npz: {exc}") from None


def load_inputs(
    specs: Sequence[str], models: Sequence[ModelInfo], model: str
) -> dict[str, np.ndarray[Any, Any]]:
    """Read ``--input`` values: ``NAME=FILE.npy``, ``FILE.npy`` or ``FILE.npz``."""
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for spec in specs:
        name, sep, path_text = spec.partition("=")
        if not sep:
            name, path_text = "", spec
        path = Path(path_text)
        loaded = _load_array_file(path)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                inputs.update({key: loaded[key] for key in loaded.files})
            continue
        if not name:
            info = next((m for m in models if m.name == model), None)
            if info is None:
                raise InvalidInput(
                    f"say which input {path} is for: --input NAME={path} (model {model!r} "
                    "is served by neither this node nor its peers: its inputs are not known here)"
                )
            if len(info.inputs) != 1:
                raise InvalidInput(
                    f"say which input {path} is for: --input NAME={path} "
                    f"(model {model!r} has inputs {[t.name for t in info.inputs]})"
                )
            name = info.inputs[0].name
        inputs[name] = loaded
    return inputs


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table with aligned columns."""
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
