"""What tests share: paths, the test mesh key, and (in the modules here) real nodes,
raw msgpack-RPC sockets, process fleets and network-namespace labs.

This package itself imports nothing of ``mesh`` so that the pure core's tests,
which run in a venv with only numpy and msgpack, can use it.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "models"
KEY = b"0123456789abcdef0123456789abcdef"

__all__ = ["KEY", "MODELS_DIR", "REPO"]
