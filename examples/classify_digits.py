"""Classify handwritten digits through an edgemesh node with the SDK.

Start a node first (``edgemesh node --host 127.0.0.1``), then:

    python examples/classify_digits.py --node 127.0.0.1:7700
"""

import argparse
import asyncio

import numpy as np

from mesh import MeshClient
from mesh.config import bundled_models_dir


async def main(node: str, mesh_key: str | None) -> None:
    with np.load(bundled_models_dir() / "digits-test.npz") as data:
        pixels, truth = data["X"], data["y"]
    async with MeshClient(node, mesh_key=mesh_key) as client:
        outputs = await client.infer("digits-small", {"X": pixels})
    accuracy = float(np.mean(outputs["label"] == truth))
    print(f"first ten: {outputs['label'][:10].tolist()}  accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default="127.0.0.1:7700")
    parser.add_argument("--mesh-key", default=None, help="the mesh key, if the node has one")
    args = parser.parse_args()
    asyncio.run(main(args.node, args.mesh_key))
