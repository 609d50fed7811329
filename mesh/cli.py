"""The ``edgemesh`` command line: argparse in, configuration out, then asyncio.run.

Subcommands: ``node`` (run a node), ``gateway`` (run a cloud gateway),
``infer``, ``models`` and ``status`` (talk to a running node), ``demo`` (see
it all work on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mesh._version import __version__
from mesh.client import Inference, MeshClient, ModelInfo
from mesh.config import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_RPC_PORT,
    GatewayServerConfig,
    NodeConfig,
    load_gateway_config,
    load_node_config,
    mesh_key_from,
)
from mesh.errors import ConfigError, InvalidInput, MeshError
from mesh.logs import configure_logging

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        result: int = args.handler(args, os.environ)
    except ConfigError as exc:
        print(f"edgemesh: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except MeshError as exc:
        print(f"edgemesh: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Whoever read our output (head, less) has gone: nothing left to say.
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result


# --- argument parsing ---------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemesh",
        description="A peer-to-peer ONNX inference mesh for the devices you already own.",
    )
    parser.add_argument("--version", action="version", version=f"edgemesh {__version__}")
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    node = commands.add_parser(
        "node",
        help="run a node that serves ONNX models",
        description=(
            "Run an edgemesh node. It loads the ONNX models of its model directories "
            "(the bundled ones by default) and serves them over msgpack-RPC. "
            "Settings come from --config FILE, then EDGEMESH_* variables, then flags."
        ),
    )
    node.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    node.add_argument("--name", help="this node's name in the mesh (default: the hostname)")
    node.add_argument("--host", help="address to listen on (default: 0.0.0.0, every interface)")
    node.add_argument("--port", help=f"RPC port (default: {DEFAULT_RPC_PORT}; 0 picks a free port)")
    node.add_argument(
        "--models",
        action="append",
        metavar="DIR",
        help="a directory of .onnx models (repeatable; default: the bundled models)",
    )
    node.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="serve only this model (repeatable; default: every model found)",
    )
    node.add_argument(
        "--mesh-key-file",
        metavar="FILE",
        help="file holding the mesh's shared key (or set EDGEMESH_MESH_KEY); "
        "without a key the node is open to anyone who can reach it",
    )
    node.add_argument(
        "--peer",
        action="append",
        metavar="HOST:PORT",
        help="a bootstrap peer (repeatable); one is enough, peers share what they know. "
        "Use where mDNS cannot work: Wi-Fi client isolation, VLANs, containers",
    )
    node.add_argument(
        "--no-mdns",
        dest="mdns",
        action="store_const",
        const=False,
        help="do not use mDNS to find peers (use --peer instead)",
    )
    node.add_argument(
        "--interface",
        action="append",
        metavar="IP",
        help="bind mDNS to this interface address only (repeatable; default: all). "
        "Local demos and tests use --interface 127.0.0.1",
    )
    node.add_argument(
        "--gossip-interval",
        metavar="SECONDS",
        help="how often to tell peers we are alive, and how loaded (default: 0.2)",
    )
    node.add_argument(
        "--suspect-after",
        metavar="SECONDS",
        help="silence before a peer is suspected (default: 0.8)",
    )
    node.add_argument(
        "--dead-after",
        metavar="SECONDS",
        help="suspicion before a peer is declared dead (default: 0.6)",
    )
    node.add_argument(
        "--forget-after",
        metavar="SECONDS",
        help="how long a dead peer is remembered (default: 30)",
    )
    node.add_argument(
        "--intra-op-threads", metavar="N", help="onnxruntime threads per call (default: 1)"
    )
    node.add_argument(
        "--per-model-concurrency",
        metavar="N",
        help="calls of one model running at once (default: CPU count)",
    )
    node.add_argument(
        "--executor-threads", metavar="N", help="worker threads for all models (default: CPUs)"
    )
    node.add_argument(
        "--max-message-bytes", metavar="N", help="largest RPC message (default: 64 MiB)"
    )
    node.add_argument(
        "--max-in-flight-per-connection",
        metavar="N",
        help="concurrent requests per connection before Overloaded (default: 1024)",
    )
    node.add_argument(
        "--slots",
        metavar="N",
        help="requests this node runs at once (default: one per executor thread)",
    )
    node.add_argument(
        "--no-steal",
        dest="steal",
        action="store_const",
        const=False,
        help="do not share work: run only what enters this node, and give none away",
    )
    node.add_argument(
        "--http-port",
        metavar="PORT",
        help="also serve the Open Inference Protocol (KServe V2 REST) on this port "
        "(0 picks a free port; default: no HTTP)",
    )
    node.add_argument(
        "--gateway",
        metavar="URL",
        help="cloud gateway (any Open Inference Protocol server) for requests the mesh "
        "cannot serve in time or at all (default: none; such requests get Overloaded)",
    )
    node.add_argument(
        "--gateway-timeout",
        metavar="SECONDS",
        help="longest wait for the gateway when a request has no deadline (default: 30)",
    )
    node.add_argument(
        "--default-deadline-ms",
        metavar="MS",
        help="for a request that gives no deadline: the mesh must be able to finish it "
        "within this, or it goes to the gateway (or is refused); it is not dropped when "
        "this passes (default: 2000)",
    )
    node.add_argument(
        "--queue-cap",
        metavar="N",
        help="requests queued on this node at most before new ones go to the gateway "
        "(default: 1024)",
    )
    node.add_argument(
        "--emulate-speed",
        metavar="F",
        help="for experiments: behave like a device F times as fast as the reference "
        "(the real model runs; the call is padded to --emulate-service-ms / F)",
    )
    node.add_argument(
        "--emulate-service-ms",
        metavar="MS",
        help="for experiments: the reference device's time per call (default: 20)",
    )
    node.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {name, id, host, rpc_port} as JSON here once listening",
    )
    _add_log_flags(node)
    node.set_defaults(command="node", handler=_cmd_node)

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

    demo = commands.add_parser(
        "demo",
        help="see a mesh share a burst on this machine: three devices and a gateway",
        description=(
            "Start three nodes emulating devices of different speeds and a cloud gateway, "
            "all on 127.0.0.1 with a fresh mesh key (mDNS on 127.0.0.1 only), send every "
            "held-out handwritten digit at once to the slowest node, and show where each "
            "ran (locally, stolen by a faster device, or handed to the gateway), accuracy "
            "and latency. Every process is stopped at the end, even on Ctrl-C."
        ),
    )
    demo.add_argument("--samples", type=int, metavar="N", help="classify only the first N digits")
    demo.add_argument(
        "--deadline-ms",
        type=float,
        default=1000.0,
        metavar="MS",
        help="each request's deadline; the mesh hands to the gateway what it cannot finish "
        "in time (default: 1000)",
    )
    demo.add_argument(
        "--no-gateway",
        action="store_true",
        help="start no gateway: the requests the mesh cannot finish in time are refused",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="keep the processes' logs and files here (default: a temporary directory)",
    )
    demo.set_defaults(command="demo", handler=_cmd_demo)
    _add_gateway_parser(commands)
    return parser


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


def _add_log_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", help="debug, info, warning or error (default: info)")
    parser.add_argument("--log-format", help="text or json (default: text)")


# --- node ---------------------------------------------------------------------


def _cmd_node(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    flags = {key: value for key, value in vars(args).items() if key not in {"config", "handler"}}
    config = load_node_config(flags, environ, args.config)
    configure_logging(config.log_level, config.log_format)
    asyncio.run(_run_node(config))
    return 0


async def _run_node(config: NodeConfig) -> None:
    # Imported here so that client commands start fast, without onnxruntime.
    from mesh.node import Node

    node = Node(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, node.stop)
    try:
        await node.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


# --- gateway ------------------------------------------------------------------


def _add_gateway_parser(commands: Any) -> None:
    gateway = commands.add_parser(
        "gateway",
        help="run a cloud gateway: an Open Inference Protocol (V2 REST) server",
        description=(
            "Run the cloud gateway nodes hand requests to when the mesh is saturated. "
            "It serves the ONNX models of its model directories with onnxruntime, or, "
            "with --upstream, forwards every request to another Open Inference Protocol "
            "server (Triton, KServe, MLServer). Settings come from --config FILE, then "
            "EDGEMESH_GATEWAY_* variables, then flags."
        ),
    )
    gateway.add_argument("--config", type=Path, help="TOML file with any of the settings below")
    gateway.add_argument("--name", help="the gateway's name in answers and logs (default: gateway)")
    gateway.add_argument("--host", help="address to listen on (default: 0.0.0.0, every interface)")
    gateway.add_argument(
        "--port", help=f"HTTP port (default: {DEFAULT_GATEWAY_PORT}; 0 picks a free port)"
    )
    gateway.add_argument(
        "--models",
        action="append",
        metavar="DIR",
        help="a directory of .onnx models (repeatable; default: the bundled models)",
    )
    gateway.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="serve only this model (repeatable; default: every model found)",
    )
    gateway.add_argument(
        "--upstream",
        metavar="URL",
        help="forward every request to this Open Inference Protocol server "
        "(http://host:port) instead of running models here",
    )
    gateway.add_argument(
        "--upstream-timeout",
        metavar="SECONDS",
        help="longest wait for the upstream when a request has no deadline (default: 30)",
    )
    gateway.add_argument(
        "--upstream-max-in-flight",
        metavar="N",
        help="requests sent upstream at once before 503 (default: 256)",
    )
    gateway.add_argument(
        "--slots", metavar="N", help="requests run at once (default: one per executor thread)"
    )
    gateway.add_argument(
        "--queue-cap",
        metavar="N",
        help="requests waiting for a slot before more are refused with 503 (default: 1024)",
    )
    gateway.add_argument(
        "--emulate-service-ms",
        metavar="MS",
        help="for benchmarks: pad every call to MS milliseconds, so the gateway's capacity "
        "is --slots / MS (the real model runs and its outputs are returned)",
    )
    gateway.add_argument(
        "--intra-op-threads", metavar="N", help="onnxruntime threads per call (default: 1)"
    )
    gateway.add_argument(
        "--per-model-concurrency",
        metavar="N",
        help="calls of one model running at once (default: CPU count)",
    )
    gateway.add_argument(
        "--executor-threads", metavar="N", help="worker threads for all models (default: CPUs)"
    )
    gateway.add_argument(
        "--max-body-bytes", metavar="N", help="largest request body, else 413 (default: 64 MiB)"
    )
    gateway.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {name, host, http_port} as JSON here once listening",
    )
    _add_log_flags(gateway)
    gateway.set_defaults(command="gateway", handler=_cmd_gateway)


def _cmd_gateway(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    flags = {key: value for key, value in vars(args).items() if key not in {"config", "handler"}}
    config = load_gateway_config(flags, environ, args.config)
    configure_logging(config.log_level, config.log_format)
    asyncio.run(_run_gateway(config))
    return 0


async def _run_gateway(config: GatewayServerConfig) -> None:
    # Imported here so that client commands start fast, without onnxruntime.
    from mesh.gateway_server import Gateway

    gateway = Gateway(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, gateway.stop)
    try:
        await gateway.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


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


# --- demo ---------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from mesh.demo import run_demo

    del environ
    if args.samples is not None and args.samples <= 0:
        raise ConfigError("--samples must be a positive number")
    if not args.deadline_ms > 0:
        raise ConfigError("--deadline-ms must be a positive number")
    return run_demo(
        samples=args.samples,
        deadline_ms=args.deadline_ms,
        gateway=not args.no_gateway,
        workdir=args.workdir,
    )
