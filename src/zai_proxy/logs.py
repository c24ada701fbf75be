"""Structured logging: JSON lines for machines, readable lines for a terminal.

Everything logs through the standard `logging` module with `extra=` fields.  Two
formatters turn a record into one line: `JsonFormatter` (one JSON object) and
`ConsoleFormatter` (time, level, logger, message, then the fields as key=value; a
traceback follows on its own lines).  `configure` picks the console one when stderr is a
terminal and JSON otherwise; `LOG_FORMAT=json|console` overrides.  Both replace any
secret (the upstream key, the admin token) with `[REDACTED]` in the final line, as a last
defence: no code path is meant to log one in the first place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TextIO

from .settings import log_format_from_env

__all__ = ["ConsoleFormatter", "JsonFormatter", "configure"]

_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# A value printed bare in key=value form; anything else (spaces, quotes, =, backslashes,
# control characters, the empty string) is printed as a JSON string.
_BARE = re.compile(r"[^\s\"'=\\]+")


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                # As written, and as it reads inside a JSON string (a quote or backslash
                # in it is escaped there).
                forms.update({secret, json.dumps(secret, ensure_ascii=False)[1:-1]})
        self._secrets = tuple(sorted(forms, key=len, reverse=True))

    def redact(self, line: str) -> str:
        for secret in self._secrets:
            line = line.replace(secret, "[REDACTED]")
        return line


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """The record's `extra=` fields."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_fields(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        line = json.dumps(payload, default=str, ensure_ascii=False)
        return self.redact(line)


class ConsoleFormatter(_Redacting):
    """``2026-12-02 17:52:01.123 INFO    zai_proxy.proxy  proxy listening  url=... n=3``"""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        message = record.getMessage()
        if not message.isprintable():
            # One record, one line: a newline in the message would pass for a new record.
            message = json.dumps(message, ensure_ascii=False)[1:-1]
        parts = [f"{when} {record.levelname:<7} {record.name}  {message}"]
        pairs = " ".join(f"{key}={_console_value(v)}" for key, v in _fields(record).items())
        if pairs:
            parts.append("  " + pairs)
        if record.exc_info:
            parts.append("\n" + self.formatException(record.exc_info))
        if record.stack_info:
            parts.append("\n" + self.formatStack(record.stack_info))
        return self.redact("".join(parts))


def _console_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        try:
            return json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            value = str(value)
    if _BARE.fullmatch(value) and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=False)


def configure(
    level: str = "info",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    fmt: str | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Route all logging to one handler on stderr (or `stream`).

    `fmt` is ``json``, ``console`` or ``auto`` (console on a terminal); None reads
    LOG_FORMAT from `env` (the process environment by default), so a bad value stops
    start-up with a SettingsError naming it."""
    out = stream if stream is not None else sys.stderr
    chosen = fmt if fmt is not None else log_format_from_env(os.environ if env is None else env)
    if chosen == "auto":
        chosen = "console" if _is_terminal(out) else "json"
    formatter = ConsoleFormatter(secrets) if chosen == "console" else JsonFormatter(secrets)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
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


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
