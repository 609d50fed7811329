"""Classify the held-out handwritten digits through an edgemesh mesh with the SDK.

Start a node first (``edgemesh node --host 127.0.0.1``; for real devices see
lan_quickstart.md), then:

    python examples/classify_digits.py
    python examples/classify_digits.py --node 192.168.1.20:7700 --node 192.168.1.21:7700 \\
        --mesh-key-file mesh.key

It sends one request per digit (450 in all), prints the accuracy and which
node ran how many of them.
"""

import argparse
import asyncio
from collections import Counter
from pathlib import Path

import numpy as np

from mesh import MeshClient
from mesh.config import bundled_models_dir


async def main(nodes: list[str], mesh_key: bytes | None) -> None:
    with np.load(bundled_models_dir() / "digits-test.npz") as data:
        pixels, truth = data["X"], data["y"]  # float32 [450, 64], int64 [450]
    async with MeshClient(nodes, mesh_key=mesh_key) as client:
        results = await client.infer_many("digits-small", [{"X": row[None]} for row in pixels])
    predicted = np.concatenate([out["label"] for out in results])
    ran_on = Counter(out.ran_on for out in results)
    print(f"accuracy {np.mean(predicted == truth):.4f} on {len(truth)} digits")
    print("ran on   " + ", ".join(f"{name}: {count}" for name, count in ran_on.most_common()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--node",
        action="append",
        metavar="HOST:PORT",
        help="a node to send to (repeatable; default: 127.0.0.1:7700)",
    )
    parser.add_argument(
        "--mesh-key-file", type=Path, metavar="FILE", help="the mesh key, if the mesh has one"
    )
    args = parser.parse_args()
    key = args.mesh_key_file.read_bytes() if args.mesh_key_file else None
    asyncio.run(main(args.node or ["127.0.0.1:7700"], key))
