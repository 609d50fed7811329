"""``mesh/core`` stays pure: no I/O, no event loop, no runtime, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "mesh" / "core"
FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "aiohttp",
    "zeroconf",
    "onnxruntime",
    "subprocess",
    "threading",
    "concurrent",
    "time",
    "os",
    "pathlib",
    "mesh.rpc",
    "mesh.node.node",
    "mesh.runtime.runtime",
    "mesh.mdns",
    "mesh.http.server",
    "mesh.gateway.client",
}


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_imports_nothing_that_does_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    offending = {
        name for name in imported if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not offending, f"{path.name} imports {sorted(offending)}"
    assert "open(" not in path.read_text(), f"{path.name} opens files"
