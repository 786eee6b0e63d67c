"""Structured JSON logs. Only the fields we put in `extra=` are emitted: ids, counts, timings.

No image bytes, landmarks or secrets are ever passed to a logger; `redact` guards free text.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("pexir_tryon")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def silence_native_stderr() -> None:
    """MediaPipe/TFLite print C++ log lines straight to fd 2. Send fd 2 to /dev/null and keep
    Python's stderr (our logs, tracebacks, progress bars) on a copy of the real one."""
    try:
        real = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(real, "w", buffering=1)
    except OSError:  # pragma: no cover - no fd 2 (embedded use)
        pass
