"""Structured logging: one JSON object per line, with secrets scrubbed on the way out.

Everything logs through the standard `logging` module with `extra=` fields; this
formatter turns a record into a single JSON line.  `configure` installs a filter that
replaces any secret (the upstream key, the admin token) with `[REDACTED]` in the final
line, as a last defence: no code path is meant to log one in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["JsonFormatter", "configure"]

_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        line = json.dumps(payload, default=str, ensure_ascii=False)
        for secret in self._secrets:
            line = line.replace(secret, "[REDACTED]")
        return line


def configure(
    level: str = "info", *, secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Route all logging to one JSON-lines handler on stderr (or `stream`)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # hypercorn's own access log duplicates ours; keep its errors.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # Its retries (a script reloaded after a Redis restart) are routine; failures are ours
    # to report (shared_limiter.py), once per outage.
    logging.getLogger("coredis").setLevel(logging.WARNING)
