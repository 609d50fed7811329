"""Log output: readable lines by default, one JSON object per line on request.

Text lines are escaped: a message may carry strings a remote peer or client
chose (an error notification's text, a method name, a model name), and a
newline or another control character among them would let that peer write a
line of its own into the log that looks like ours. :class:`TextFormatter`
writes every such character as a visible escape (``\\n``, ``\\x1b``), so one
record is always one line. (JSON output escapes them already.)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "escape_control"]

# Characters that end or rewrite a line on a terminal or in a log viewer: the
# C0 and C1 controls, DEL, and Unicode's own line and paragraph separators.
_ESCAPES: dict[int, str] = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_control(text: str) -> str:
    """``text`` with every control character written as a visible escape."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message``, one record per line whatever the message holds.

    The message (with its arguments filled in) is escaped; a traceback that
    follows it is the node's own text and keeps its lines.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_control(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Send the package's logs to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
