"""The README runner's pure part: a markdown file's fenced code blocks, each with
the marker that says what a test does with it, and the in-process checks of a
``check`` block (tests/system/test_readme.py runs the ``run`` blocks).

Every fenced block must follow a marker line, so that a new block cannot slip
past the test unclassified::

    <!-- readme-test: run -->              run it (sh: bash -euo pipefail; python: the venv's)
    <!-- readme-test: run-background -->   start each `edgemesh node`/`gateway` in it and
                                           keep them up for the rest of the file's run blocks
    <!-- readme-test: check -->            parse it: `edgemesh` lines with the real CLI
                                           parser, Python compiled and its imports
                                           resolved, TOML through the real config loader
    <!-- readme-test: skip (why) -->       neither; the reason is required

A check never sends a packet: it is for blocks meant for a real LAN (nodes on
every interface, 192.168.x addresses, cloud URLs, systemd units).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS = ("run", "run-background", "check", "skip")
SHELL = ("sh", "bash", "shell")
PYTHON = ("python", "py")
TOML = ("toml",)

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_MARKER = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<kind>[\w-]+)\s*(?:\((?P<why>[^)]*)\))?\s*-->")
# Shell operators that end one simple command (with the newline, see shell_commands).
_OPERATORS = set("();<>|&\n")
_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, text and marker."""

    source: str
    line: int
    lang: str
    text: str
    kind: str | None
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def parse_blocks(markdown: str, source: str) -> list[Block]:
    """The fenced blocks of ``markdown``, each with the marker on the nearest
    non-blank line above its opening fence (kind None when there is none)."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(line[indent:] for line in lines[index + 1 : end])
        kind, reason = _marker_above(lines, index)
        blocks.append(Block(source, index + 1, opening["lang"].lower(), body + "\n", kind, reason))
        index = end + 1
    return blocks


def _marker_above(lines: Sequence[str], fence_index: int) -> tuple[str | None, str]:
    above = fence_index - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    marker = _MARKER.match(lines[above]) if above >= 0 else None
    if marker is None:
        return None, ""
    return marker["kind"], (marker["why"] or "").strip()


def marker_problems(blocks: Sequence[Block]) -> list[str]:
    """What is wrong with the blocks' markers: missing, unknown, a skip without
    a reason, or a kind that makes no sense for the block's language."""
    problems = []
    for block in blocks:
        if block.kind is None:
            problems.append(
                f"{block.where}: a ```{block.lang} block without a marker: put "
                "<!-- readme-test: run | run-background | check | skip (why) --> above it"
            )
        elif block.kind not in KINDS:
            problems.append(f"{block.where}: unknown marker {block.kind!r}; known: {KINDS}")
        elif block.kind == "skip" and not block.reason:
            problems.append(f"{block.where}: `skip` needs a reason: skip (why)")
        elif block.kind == "run" and block.lang not in SHELL + PYTHON:
            problems.append(f"{block.where}: only sh and python blocks can run, not {block.lang!r}")
        elif block.kind == "run-background" and block.lang not in SHELL:
            problems.append(f"{block.where}: run-background is for sh blocks")
        elif block.kind == "check" and block.lang not in SHELL + PYTHON + TOML:
            problems.append(f"{block.where}: nothing checks a {block.lang or 'plain'} block")
    return problems


# --- shell ---------------------------------------------------------------------


def _without_comments(script: str) -> str:
    """``script`` with its ``# ...`` comments removed (not those inside quotes)
    and backslash-newline continuations joined; the newlines stay."""
    out: list[str] = []
    quote = ""
    index = 0
    while index < len(script):
        char = script[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "\\" and script[index + 1 : index + 2] == "\n":
            index += 2
            out.append(" ")
            continue
        elif char == "#" and (not out or out[-1].isspace()):
            while index < len(script) and script[index] != "\n":
                index += 1
            continue
        out.append(char)
        index += 1
    return "".join(out)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script as word lists: split at newlines and
    at ``;``, ``&&``, ``||``, ``|`` and ``&``, with redirections dropped."""
    lexer = shlex.shlex(_without_comments(script), posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    commands: list[list[str]] = []
    words: list[str] = []
    redirect = False
    for token in lexer:
        if token and set(token) <= _OPERATORS:
            redirect = ">" in token or "<" in token
            if not redirect and words:
                commands.append(words)
                words = []
            continue
        if redirect:
            redirect = False  # the redirection's target is not a word of the command
            continue
        words.append(token)
    if words:
        commands.append(words)
    return commands


def edgemesh_commands(script: str) -> list[list[str]]:
    """The ``edgemesh ...`` commands of a shell script, without the program name."""
    return [words[1:] for words in shell_commands(script) if words[0] == "edgemesh"]


def parse_edgemesh(argv: Sequence[str]) -> tuple[object | None, str]:
    """``argv`` through the real ``edgemesh`` parser, in-process: the parsed
    namespace and "", or None and what the parser said was wrong."""
    from mesh.cli.main import _parser

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            return _parser().parse_args(list(argv)), ""
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --version, --help: valid, and done
            return None, ""
        return None, said.getvalue().strip().splitlines()[-1]


def check_shell(block: Block) -> list[str]:
    """Every ``edgemesh`` command in the block is one the CLI accepts."""
    problems = []
    for argv in edgemesh_commands(block.text):
        _, error = parse_edgemesh(argv)
        if error:
            problems.append(f"{block.where}: `edgemesh {shlex.join(argv)}`: {error}")
    return problems


def loopback_problems(block: Block) -> list[str]:
    """Why the block must not run here: an address that is not loopback, or a
    node or gateway that would listen or use mDNS beyond this machine."""
    addresses = re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", block.text)
    hosts = re.findall(r"https?://([\w.-]+)", block.text)
    problems = [
        f"{block.where}: {where} is not loopback"
        for where in [*addresses, *hosts]
        if not (where.startswith("127.") or where == "localhost")
    ]
    for argv in edgemesh_commands(block.text):
        args, _ = parse_edgemesh(argv)
        command = argv[0] if argv else ""
        if command not in ("node", "gateway") or args is None:
            continue
        if getattr(args, "host", None) != _LOOPBACK:
            problems.append(f"{block.where}: `edgemesh {command}` needs --host {_LOOPBACK} here")
        if command == "node" and not _mdns_on_loopback(args):
            problems.append(
                f"{block.where}: `edgemesh node` would use mDNS beyond loopback: "
                f"add --interface {_LOOPBACK} or --no-mdns"
            )
    return problems


_FILE_FLAGS = (
    "mesh_key_file",
    "http_token_file",
    "tls_cert",
    "tls_key",
    "gateway_token_file",
    "gateway_ca_file",
)


def _mdns_on_loopback(args: object) -> bool:
    """Whether the node these flags make keeps mDNS to 127.0.0.1 (or off), as
    the real config loader resolves them (no config file, no environment)."""
    from mesh.cli.serving import flags_of
    from mesh.config import load_node_config

    flags = flags_of(args)  # type: ignore[arg-type]
    # Files the flags name are no part of where mDNS goes, and an earlier
    # block of the same file may only make them when it runs.
    for key in _FILE_FLAGS:
        flags.pop(key, None)
    config = load_node_config(flags, {})
    interfaces = config.mesh.interfaces
    return not config.mesh.mdns or interfaces == (_LOOPBACK,)


# --- Python and TOML -------------------------------------------------------------


def check_python(block: Block) -> list[str]:
    """The block compiles (top-level ``await`` allowed, as in a notebook or
    ``python -m asyncio``) and every module and name it imports exists."""
    try:
        tree = compile(
            block.text,
            block.where,
            "exec",
            flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        )
    except SyntaxError as exc:
        return [f"{block.where}: does not compile: {exc}"]
    return [f"{block.where}: {problem}" for problem in _import_problems(tree)]


def _import_problems(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _find_spec(alias.name) is None:
                    yield f"`import {alias.name}`: no such module"
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if _find_spec(node.module) is None:
                yield f"`from {node.module} import ...`: no such module"
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                found = hasattr(module, alias.name) or _find_spec(f"{node.module}.{alias.name}")
                if not found:
                    yield f"`from {node.module} import {alias.name}`: no such name"


def _find_spec(name: str) -> object | None:
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent package is missing
        return None


def check_toml(block: Block) -> list[str]:
    """The block is a node config the real loader accepts. A ``mesh_key_file``
    in it names a file on the device: a key file made here overrides it (as
    the flag would), after the file's own value has been checked."""
    from mesh.config import load_node_config
    from mesh.errors import ConfigError

    with tempfile.TemporaryDirectory(prefix="readme-toml-") as tmp:
        key_file = Path(tmp) / "mesh.key"
        key_file.write_text("0123456789abcdef" * 4)
        config_file = Path(tmp) / "node.toml"
        config_file.write_text(block.text)
        try:
            load_node_config({"mesh_key_file": str(key_file)}, {}, config_file)
        except ConfigError as exc:
            return [f"{block.where}: {exc.message}"]
    return []


def check_block(block: Block) -> list[str]:
    """What is wrong with a ``check`` block, by its language."""
    if block.lang in SHELL:
        return check_shell(block)
    if block.lang in PYTHON:
        return check_python(block)
    if block.lang in TOML:
        return check_toml(block)
    return [f"{block.where}: nothing checks a {block.lang or 'plain'} block"]
