"""Structured logs: one JSON object (or key=value line) per event on stderr.

journald and log shippers take either; every line has ts, level and event.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


class Log:
    def __init__(self, fmt: str = "json", stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.stream = stream or sys.stderr

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        rec: dict[str, Any] = {"ts": round(time.time(), 3), "level": level, "event": event}
        rec.update(fields)
        if self.fmt == "kv":
            line = " ".join(f"{k}={_kv(v)}" for k, v in rec.items())
        else:
            line = json.dumps(rec, default=str, separators=(",", ":"))
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not take the daemon down

    def error(self, event: str, **fields: Any) -> None:
        self(event, "error", **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self(event, "warning", **fields)


def _kv(v: Any) -> str:
    s = str(v)
    if not s or any(c in s for c in ' "=\n'):
        return json.dumps(s)
    return s
