"""``mesh/core`` stays pure: no I/O, no event loop, no runtime, no clock.

Two checks, because each misses what the other sees:

* at run time, every module under ``mesh/core`` is imported alone in a fresh
  interpreter and ``sys.modules`` is read back. That catches what a module
  pulls in *transitively* (a core module importing an innocent-looking edge
  module that imports asyncio), which no reading of its own source can.
* statically, each file's own imports and calls are read. That catches what
  the interpreter always loads anyway (``os``), what is only imported inside a
  function, and reads of the environment or the file system.

The module list comes from walking the directory, so a new module is checked
the moment it exists; nobody has to remember to add it here.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import REPO

CORE = REPO / "mesh" / "core"

# Packages whose mere presence in sys.modules means a core module could do
# I/O, run an event loop or threads, reach the network or read config files.
FORBIDDEN_PACKAGES = frozenset(
    {
        "asyncio",
        "socket",
        "selectors",
        "ssl",
        "aiohttp",
        "zeroconf",
        "ifaddr",
        "onnxruntime",
        "subprocess",
        "threading",
        "concurrent",
        "tomllib",
    }
)

# The only parts of ``mesh`` the core may load: the package itself (its
# ``__init__`` exports the SDK lazily, so importing it is cheap), the version,
# the error tree, and the core. Everything else is an edge.
ALLOWED_MESH = frozenset({"mesh", "mesh._version", "mesh.errors", "mesh.core"})

# The interpreter loads ``os`` on start-up and numpy loads ``pathlib``, so
# sys.modules cannot tell us whether a core module *uses* them; only its
# source can. ``importlib`` is here because a dynamic import at call time
# would slip past the run-time check.
FORBIDDEN_IN_SOURCE = FORBIDDEN_PACKAGES | {
    "os",
    "time",
    "pathlib",
    "shutil",
    "tempfile",
    "glob",
    "importlib",
}

# Calls that open files or read the environment, whatever module they came from.
FORBIDDEN_CALLS = frozenset({"open", "getenv", "putenv", "__import__"})
FORBIDDEN_ATTRIBUTES = frozenset({"environ", "environb", "getenv", "putenv"})


def module_name(path: Path, root: Path) -> str:
    """``root/mesh/core/wire/tensors.py`` -> ``mesh.core.wire.tensors``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


CORE_FILES = sorted(CORE.rglob("*.py"))
CORE_MODULES = sorted(module_name(path, REPO) for path in CORE_FILES)


def is_forbidden(name: str, packages: Iterable[str] = FORBIDDEN_PACKAGES) -> bool:
    """Whether a loaded or imported module name is off limits for the core."""
    top = name.partition(".")[0]
    if top == "mesh":
        # Prefixes, so that ``mesh.errors.ConfigError`` (an imported name) and
        # every ``mesh.core.*`` module pass, but a bare ``mesh.config`` does not.
        return name != "mesh" and not any(
            name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED_MESH - {"mesh"}
        )
    return top in packages


def forbidden_loaded(modules: Iterable[str]) -> set[str]:
    """The forbidden names among ``modules`` (a ``sys.modules`` listing)."""
    return {name for name in modules if is_forbidden(name)}


def modules_after_import(module: str, extra_path: Iterable[Path] = ()) -> set[str]:
    """Import ``module`` alone in a fresh interpreter; return its ``sys.modules``.

    The interpreter runs from the repository root, so ``mesh`` is importable
    from the checkout even where the package is not installed (the minimal
    venv the core tests run in on CI).
    """
    extra = [str(p) for p in extra_path]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(extra)} if extra else None
    code = f"import {module}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"importing {module} failed:\n{result.stderr}"
    loaded = json.loads(result.stdout)
    assert isinstance(loaded, list)
    return {str(name) for name in loaded}


@pytest.fixture(scope="module")
def imported() -> Iterator[dict[str, Future[set[str]]]]:
    """Every core module imported in its own interpreter, a few at a time.

    Each interpreter is fresh (one per module is the whole point), but they
    need not run one after another: a small pool keeps the suite fast on a
    shared two-core machine without flooding it.
    """
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {module: pool.submit(modules_after_import, module) for module in CORE_MODULES}


def test_every_core_module_is_found() -> None:
    # The old check globbed only mesh/core/*.py and so saw nothing but
    # __init__.py once the core grew subpackages; make that impossible again.
    assert "mesh.core" in CORE_MODULES
    assert "mesh.core.wire.framing" in CORE_MODULES
    assert "mesh.core.scheduling.scheduler" in CORE_MODULES
    packages = {path.parent for path in CORE_FILES}
    assert {CORE / sub for sub in ("wire", "scheduling", "policy", "membership")} <= packages


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_loads_nothing_that_does_io(
    module: str, imported: dict[str, Future[set[str]]]
) -> None:
    offending = forbidden_loaded(imported[module].result())
    assert not offending, f"importing {module} loads {sorted(offending)}"


def test_the_import_check_can_fail(tmp_path: Path) -> None:
    # A throwaway package on PYTHONPATH, run through the very same checker:
    # if this passed, the parametrized test above could not fail either.
    package = tmp_path / "leaky"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "uses_asyncio.py").write_text("import asyncio\n")
    (package / "uses_config.py").write_text("import mesh.config\n")
    (package / "uses_core.py").write_text("import mesh.core.wire.framing\n")

    assert "asyncio" in forbidden_loaded(modules_after_import("leaky.uses_asyncio", [tmp_path]))
    assert "mesh.config" in forbidden_loaded(modules_after_import("leaky.uses_config", [tmp_path]))
    assert not forbidden_loaded(modules_after_import("leaky.uses_core", [tmp_path]))


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name an ``ImportFrom`` refers to (relative ones included)."""
    if node.level == 0:
        return node.module or ""
    package = module if is_package else module.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def imported_names(node: ast.Import | ast.ImportFrom, module: str, root: Path) -> list[str]:
    """The modules an import statement loads, as absolute names.

    ``from mesh import config`` loads ``mesh.config``, so for a package of our
    own each imported name that is a submodule on disk counts as well.
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = resolve(node, module, is_package=module_name_is_package(module, root))
    names = [base]
    for alias in node.names:
        candidate = root.joinpath(*f"{base}.{alias.name}".split("."))
        if candidate.is_dir() or candidate.with_suffix(".py").is_file():
            names.append(f"{base}.{alias.name}")
    return names


def module_name_is_package(module: str, root: Path) -> bool:
    return root.joinpath(*module.split("."), "__init__.py").is_file()


def source_offences(path: Path, root: Path) -> list[str]:
    """What in one file's source breaks the core's rules, one line each, in order."""
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), filename=str(path))
    offences: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            offences += [
                (node.lineno, f"imports {name}")
                for name in imported_names(node, module, root)
                if is_forbidden(name, FORBIDDEN_IN_SOURCE)
            ]
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
                offences.append((node.lineno, f"calls {node.func.id}()"))
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            offences.append((node.lineno, f"uses .{node.attr}"))
    return [f"line {line}: {what}" for line, what in sorted(offences)]


@pytest.mark.parametrize("path", CORE_FILES, ids=[str(p.relative_to(CORE)) for p in CORE_FILES])
def test_core_source_does_no_io_and_reads_no_environment(path: Path) -> None:
    offences = source_offences(path, REPO)
    assert not offences, f"{path.relative_to(REPO)}:\n" + "\n".join(offences)


def test_the_source_check_can_fail(tmp_path: Path) -> None:
    core = tmp_path / "mesh" / "core"
    core.mkdir(parents=True)
    for package in (tmp_path / "mesh", core):
        (package / "__init__.py").write_text("")
    (tmp_path / "mesh" / "config.py").write_text("")
    (tmp_path / "mesh" / "errors.py").write_text("")
    bad = core / "bad.py"
    bad.write_text(
        "import os\n"
        "from time import monotonic\n"
        "from .. import config, errors\n"
        "from ..rpc import connect\n"
        "from mesh.errors import ConfigError\n"
        "KEY = os.environ['MESH_KEY']\n"
        "HOME = os.getenv('HOME')\n"
        "def load() -> bytes:\n"
        "    with open('model.onnx', 'rb') as f:\n"
        "        return f.read()\n"
    )
    assert source_offences(bad, tmp_path) == [
        "line 1: imports os",
        "line 2: imports time",
        "line 3: imports mesh.config",
        "line 4: imports mesh.rpc",
        "line 6: uses .environ",
        "line 7: uses .getenv",
        "line 9: calls open()",
    ]
