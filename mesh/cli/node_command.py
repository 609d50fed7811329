"""``edgemesh node``: run a node that serves ONNX models to the mesh."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mesh.cli.limit_flags import add_node_limit_flags
from mesh.cli.serving import (
    Server,
    add_drain_flag,
    add_log_flags,
    add_model_flags,
    flags_of,
    serve,
)
from mesh.config import DEFAULT_RPC_PORT, load_node_config

__all__ = ["add_node_command"]


def add_node_command(commands: Any) -> None:
    """Add ``node`` to the ``edgemesh`` subcommands."""
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
    node.add_argument(
        "--name",
        help="this node's name in the mesh, unique on the network "
        "(default: the hostname on port 7700, else hostname-PORT)",
    )
    node.add_argument(
        "--host",
        help="address to listen on (default: 0.0.0.0, every interface); one address "
        "also keeps mDNS to it unless --interface is given",
    )
    node.add_argument("--port", help=f"RPC port (default: {DEFAULT_RPC_PORT}; 0 picks a free port)")
    add_model_flags(node)
    node.add_argument(
        "--mesh-key-file",
        metavar="FILE",
        help="file holding the mesh's shared key (or set EDGEMESH_MESH_KEY); "
        "without a key the node is open to anyone who can reach it",
    )
    node.add_argument(
        "--client-key-file",
        metavar="FILE",
        help="file holding a second key for clients only: its holders may infer, list "
        "models and read status, never join the mesh (needs --mesh-key-file)",
    )
    node.add_argument(
        "--no-seal",
        dest="seal",
        action="store_const",
        const=False,
        help="keep mesh links authenticated but not encrypted (default: with a key, every "
        "frame after the handshake is sealed with AES-256-GCM or ChaCha20-Poly1305)",
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
        help="bind mDNS to this interface address only, and advertise it (repeatable; "
        "default: --host's address, or every interface with --host 0.0.0.0)",
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
        "--model-store",
        metavar="DIR",
        help="where models pulled from peers or pushed by 'edgemesh models push' are "
        "written and served from, scanned like --models (default: the first --models "
        "directory; a node serving only the bundled models refuses pulls and pushes)",
    )
    node.add_argument(
        "--fetch-models",
        action="store_const",
        const=True,
        help="asked for a model it lacks that a live peer serves, fetch a verified copy "
        "from that peer in the background and serve it too (the request is routed "
        "to the peer meanwhile); default: off",
    )
    node.add_argument(
        "--http-port",
        metavar="PORT",
        help="also serve the Open Inference Protocol (KServe V2 REST) on this port "
        "(0 picks a free port; default: no HTTP)",
    )
    node.add_argument(
        "--http-host",
        metavar="ADDRESS",
        help="address the HTTP API listens on (default: --host's; but 127.0.0.1 for a node "
        "with a mesh key and no --http-token-file, so a closed mesh has no open door)",
    )
    node.add_argument(
        "--http-token-file",
        metavar="FILE",
        help="file holding a bearer token every HTTP request must carry "
        "(Authorization: Bearer TOKEN; all but /v2/health/live); default: none checked",
    )
    node.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve the HTTP API over HTTPS with this PEM certificate chain (with --tls-key)",
    )
    node.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
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
        "--gateway-token-file",
        metavar="FILE",
        help="file holding the bearer token sent with every request to the gateway",
    )
    node.add_argument(
        "--gateway-ca-file",
        metavar="FILE",
        help="for an https:// gateway: trust only the certificates this PEM file vouches for "
        "(default: the system's CAs)",
    )
    node.add_argument(
        "--default-deadline-ms",
        metavar="MS",
        help="with --gateway, for a request that gives no deadline: the mesh must be able "
        "to finish it within this, or it goes to the gateway; it is never dropped when this "
        "passes, and without a gateway such a request just queues (default: 2000)",
    )
    node.add_argument(
        "--queue-cap",
        metavar="N",
        help="requests queued on this node at most before new ones go to the gateway, "
        "or, with none, get Overloaded (default: 1024)",
    )
    node.add_argument(
        "--escalate",
        metavar="MODEL=TARGET@THRESHOLD[:OUTPUT]",
        action="append",
        help="joint inference: MODEL's answer rows whose top probability (in output OUTPUT, "
        "default probabilities) is below THRESHOLD are re-run on TARGET, here, on a peer or "
        "on the gateway (repeatable; replaces the manifest's escalate rule)",
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
        "--reload-interval",
        metavar="SECONDS",
        help="rescan the model directories this often and serve what changed: new files "
        "and versions, removed and replaced ones (default: 2; 0: only on SIGHUP or "
        "the reload RPC)",
    )
    node.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {name, id, host, rpc_port, http_port} as JSON here once listening "
        "(http_port: null without --http-port)",
    )
    add_drain_flag(node)
    add_node_limit_flags(node)
    add_log_flags(node)
    node.set_defaults(command="node", handler=_cmd_node)


def _cmd_node(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    config = load_node_config(flags_of(args), environ, args.config)

    def make() -> Server:
        # Imported here so that client commands start fast, without onnxruntime.
        from mesh.node.node import Node

        return Node(config)

    return serve(config.log_level, config.log_format, make)
