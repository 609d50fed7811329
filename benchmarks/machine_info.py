"""The machine a benchmark ran on, as every benchmark prints it beside its figures."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mesh import __version__ as mesh_version

__all__ = ["machine", "machine_line"]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(packages: Sequence[str]) -> dict[str, Any]:
    """CPU, cores, memory, kernel, Python, edgemesh, and the versions of ``packages``."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "edgemesh": mesh_version,
        "packages": {name: _version(name) for name in packages},
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line for the top of a table."""
    versions = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    return (
        f"{info['cpu']}, {info['usable_cores']} of {info['cores']} cores usable, "
        f"{info['memory_gb']} GiB, Linux {info['kernel']}; Python {info['python']}, "
        f"edgemesh {info['edgemesh']}, {versions}"
    )
