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

from mesh.config import DEFAULT_RPC_PORT, mesh_key_from
from mesh.errors import InvalidInput
from mesh.sdk.client import Inference, MeshClient, ModelInfo

__all__ = ["add_client_commands", "format_table", "load_inputs"]


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
    infer.add_argument("--deadline", type=float, metavar="SECONDS", help="give up after this")
    infer.add_argument("--json", action="store_true", help="print the outputs as JSON")
    infer.set_defaults(command="infer", handler=_cmd_infer)

    models = commands.add_parser(
        "models",
        help="list a node's models",
        description=(
            "List the models a node serves, with each input and output's name, dtype and "
            "shape (-1: any size), as `edgemesh infer` and the SDK expect them."
        ),
    )
    _add_client_flags(models)
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
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="wait this long"
    )


# --- client commands ----------------------------------------------------------


def _client(args: argparse.Namespace, environ: Mapping[str, str]) -> MeshClient:
    key = mesh_key_from(key_file=args.mesh_key_file, environ=environ)
    return MeshClient(args.node, mesh_key=key, timeout=args.timeout)


def _cmd_models(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
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
            m.version,
            ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in m.inputs),
            ", ".join(f"{t.name} {t.dtype}{list(t.shape)}" for t in m.outputs),
            "compute-only"
            if m.compute_only
            else ("" if m.accuracy is None else f"{m.accuracy:.4f}"),
            m.sha256[:12],
        ]
        for m in models
    ]
    print(format_table(["model", "version", "inputs", "outputs", "accuracy", "sha256"], rows))
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
    counters = status.get("counters", {})
    rows: list[list[object]] = [
        ["name", status.get("name")],
        ["id", status.get("id")],
        ["version", status.get("version")],
        ["mesh", f"{status.get('mesh_id')} ({'key' if status.get('auth') else 'OPEN'})"],
        ["models", ", ".join(status.get("models", []))],
        ["uptime", f"{status.get('uptime_s', 0):.1f} s"],
        ["http", (status.get("http") or {}).get("port") or "off"],
        ["gateway", _gateway_text(status.get("gateway"))],
        *[[f"counters.{k}", v] for k, v in counters.items()],
    ]
    print(format_table(["field", "value"], rows))
    peers = status.get("peers", [])
    print()
    if not peers:
        print("no peers known")
        return 0
    print(
        format_table(
            ["peer", "id", "address", "state", "models", "queued s", "free", "heard"],
            [
                [
                    p.get("name"),
                    p.get("id"),
                    p.get("address"),
                    p.get("state"),
                    ", ".join(p.get("models", [])),
                    f"{p.get('queued_s', 0):.3f}",
                    p.get("free_slots", ""),
                    f"{p.get('last_heard_s', 0):.1f} s ago",
                ]
                for p in peers
            ],
        )
    )
    return 0


def _gateway_text(gateway: dict[str, Any] | None) -> str:
    if not gateway:
        return "none"
    text = f"{gateway.get('url')}, circuit {gateway.get('state')}"
    if gateway.get("last_failure"):
        text += f" (last failure: {gateway['last_failure']})"
    return text


def _cmd_infer(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    async def run() -> Inference:
        async with _client(args, environ) as client:
            inputs = load_inputs(args.input, await client.models(), args.model)
            return await client.infer(args.model, inputs, deadline=args.deadline)

    outputs = asyncio.run(run())
    if args.json:
        print(
            json.dumps(
                {
                    "outputs": {name: array.tolist() for name, array in outputs.items()},
                    "ran_on": outputs.ran_on,
                }
            )
        )
        return 0
    for name, array in outputs.items():
        print(f"{name}: {array.dtype} {list(array.shape)}")
        print(np.array2string(array, threshold=200, precision=4, suppress_small=True))
    print(f"ran on: {outputs.ran_on}")
    return 0


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
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read {path} as .npy or .npz: {exc}") from None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                inputs.update({key: loaded[key] for key in loaded.files})
            continue
        if not name:
            info = next((m for m in models if m.name == model), None)
            if info is None or len(info.inputs) != 1:
                raise InvalidInput(
                    f"say which input {path} is for: --input NAME={path} "
                    f"(model {model!r} has inputs "
                    f"{[t.name for t in info.inputs] if info else 'unknown'})"
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
