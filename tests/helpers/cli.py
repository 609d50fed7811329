"""The ``edgemesh`` command as a user runs it: a subprocess of this interpreter.

Integration tests that drive a node in their own event loop use this to run
the command against it without blocking that loop.
"""

from __future__ import annotations

import asyncio
import sys

from tests.helpers import REPO


async def run_edgemesh(*args: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
    """Run ``python -m mesh ARGS`` from the repository; return (exit status, stdout, stderr).

    Fails (``TimeoutError``) when the command runs longer than ``timeout_s``.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout_s):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
