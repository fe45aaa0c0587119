"""Log set-up for ``kubectl logs``: one line per event, text by default, JSON on request.

Nothing assumes a terminal: no colours, UTC timestamps, the level padded to a fixed width so
messages line up. A JSON record is one line whatever it holds: a traceback goes into its
``exc`` field (and a stack into ``stack``), not onto lines of its own.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, and exc/stack when it has them."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out)


def text_formatter() -> logging.Formatter:
    """``2026-01-02T03:04:05.678Z INFO    message``: UTC, the level padded to 7 characters."""
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    return formatter


def setup(level: str = "info", fmt: str = "text") -> None:
    """Log records of ``level`` and above to stderr as ``fmt`` ('text' or 'json')."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
