"""A remote peer cannot write lines of its own into a node's text log."""

from __future__ import annotations

import logging
import socket
import sys
import time
from pathlib import Path

import msgpack
import pytest

from mesh.cli.logs import TextFormatter, escape_control
from mesh.demo.processes import start_node_process, stop_process
from tests.helpers import KEY

INJECTED = "boom\n16:00:00 WARNING mesh.node.node: INJECTED LINE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text", "plain text"),
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00", "nul\\x00"),
        ("del\x7f", "del\\x7f"),
        ("c1\x85next", "c1\\x85next"),
        ("sep\u2028para\u2029", "sep\\u2028para\\u2029"),
        ("unicode é ✓ stays", "unicode é ✓ stays"),
    ],
)
def test_control_characters_are_escaped(text: str, expected: str) -> None:
    assert escape_control(text) == expected


def test_a_record_with_a_newline_in_its_arguments_is_one_line() -> None:
    record = logging.LogRecord(
        "mesh.rpc.connection",
        logging.WARNING,
        __file__,
        1,
        "%s reports: %s: %s",
        ("127.0.0.1:5555", "AuthError", INJECTED),
        None,
    )
    line = TextFormatter().format(record)
    assert "\n" not in line
    assert line.endswith("reports: AuthError: " + INJECTED.replace("\n", "\\n"))


def _fail() -> None:
    raise ValueError("bad\nvalue")


def test_a_traceback_keeps_its_lines() -> None:
    try:
        _fail()
    except ValueError:
        record = logging.LogRecord(
            "mesh", logging.ERROR, __file__, 1, "failed: %s", ("x\ny",), sys.exc_info()
        )
    text = TextFormatter().format(record)
    first, *rest = text.splitlines()
    assert first.endswith("failed: x\\ny")
    assert rest[0].startswith("Traceback")


def test_an_unauthenticated_error_notification_cannot_forge_a_log_line(tmp_path: Path) -> None:
    process, port = start_node_process(
        tmp_path, name="victim", key=KEY, extra=["--no-mdns", "--model", "digits-small"]
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(msgpack.packb([2, "error", ["AuthError", INJECTED]]))
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            while sock.recv(4096):
                pass
        # The warning is written as the notification arrives; give the log a moment.
        log_file = tmp_path / "victim.log"
        deadline = time.monotonic() + 5
        while "INJECTED" not in log_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop_process(process)
    lines = log_file.read_text().splitlines()
    reported = [line for line in lines if "INJECTED LINE" in line]
    assert reported, f"the notification was not logged at all:\n{lines}"
    assert not any(line.startswith("16:00:00") for line in lines), lines
    assert all("boom\\n16:00:00" in line for line in reported), reported
