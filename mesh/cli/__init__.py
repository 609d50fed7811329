"""The ``edgemesh`` command: one module per command family."""

from mesh.cli.main import main

__all__ = ["main"]
