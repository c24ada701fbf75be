"""Log lines: JSON for machines, key=value lines for a terminal, never a secret."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator

import pytest

from zai_proxy import cli
from zai_proxy.errors import SettingsError
from zai_proxy.logs import ConsoleFormatter, JsonFormatter, configure

SECRET = 'sk-zai-"quoted\\secret'


def record(
    message: str = "proxy listening",
    *args: object,
    exc: bool = False,
    exc_message: str = "the upstream said no",
    **fields: object,
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(exc_message)
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("zai_proxy.proxy", logging.WARNING, "f.py", 1, message, args, exc_info)
    made.created = 1764697921.123  # 2025-12-02 17:52:01.123 UTC
    made.__dict__.update(fields)
    return made


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after `configure` replaced its handler."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_console_line_has_time_level_logger_message_and_fields() -> None:
    line = ConsoleFormatter().format(
        record(url="http://127.0.0.1:8080", max_workers=10, rate=2.5, stream=False, model=None)
    )
    assert line == (
        "2025-12-02 17:52:01.123 WARNING zai_proxy.proxy  proxy listening  "
        "url=http://127.0.0.1:8080 max_workers=10 rate=2.5 stream=false model=null"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("two\nlines", r'"two\nlines"'),
        ('say "hi"', r'"say \"hi\""'),
        ("a=b", '"a=b"'),
        ("back\\slash", r'"back\\slash"'),
        ("", '""'),
        ("tab\there", r'"tab\there"'),
        ("héllo", "héllo"),
        (["a", 1], '["a", 1]'),
        ({"k": "v w"}, '{"k": "v w"}'),
    ],
)
def test_console_values_that_need_it_are_quoted_and_escaped(value: object, shown: str) -> None:
    line = ConsoleFormatter().format(record(field=value))
    assert line.endswith(f"  field={shown}")
    assert "\n" not in line


def test_a_console_message_stays_on_one_line() -> None:
    line = ConsoleFormatter().format(record("first %s", "line\nsecond line"))
    assert "\n" not in line and line.endswith(r"first line\nsecond line")


def test_a_console_exception_follows_its_line_as_a_traceback() -> None:
    line = ConsoleFormatter().format(record("request failed", exc=True, request_id="req_1"))
    head, *trace = line.split("\n")
    assert head.endswith("request failed  request_id=req_1")
    assert trace[0] == "Traceback (most recent call last):"
    assert trace[-1] == "ValueError: the upstream said no"


def test_a_json_line_carries_the_same_fields_and_the_exception() -> None:
    line = JsonFormatter().format(record("request failed", exc=True, request_id="req_1", n=2))
    payload = json.loads(line)
    assert {k: payload[k] for k in ("ts", "level", "logger", "msg", "request_id", "n")} == {
        "ts": "2025-12-02T17:52:01.123+00:00",
        "level": "warning",
        "logger": "zai_proxy.proxy",
        "msg": "request failed",
        "request_id": "req_1",
        "n": 2,
    }
    assert payload["exc"].endswith("ValueError: the upstream said no")


@pytest.mark.parametrize("formatter", [JsonFormatter, ConsoleFormatter])
def test_a_secret_is_redacted_in_either_format(formatter: type[JsonFormatter]) -> None:
    # In the message, in a field (where JSON escapes its quote and backslash), and in a
    # traceback.
    made = record("key %s", SECRET, exc=True, exc_message=SECRET, header=f"Bearer {SECRET}")
    line = formatter([SECRET]).format(made)
    escaped = json.dumps(SECRET)[1:-1]
    assert SECRET not in line and escaped not in line and "sk-zai" not in line
    assert line.count("[REDACTED]") == 3


def pty_stream() -> Iterator[io.TextIOWrapper]:
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=True) as stream:
            yield stream
    finally:
        os.close(leader)


@pytest.fixture
def terminal() -> Iterator[io.TextIOWrapper]:
    """A real terminal (a pseudo-terminal's follower end) to log to."""
    yield from pty_stream()


def formatter_of(root: logging.Logger) -> logging.Formatter | None:
    [handler] = root.handlers
    return handler.formatter


def test_a_terminal_gets_console_lines(
    root_logging: logging.Logger, terminal: io.TextIOWrapper
) -> None:
    assert terminal.isatty()
    configure(stream=terminal, env={})
    assert isinstance(formatter_of(root_logging), ConsoleFormatter)


def test_a_pipe_gets_json_lines(root_logging: logging.Logger) -> None:
    reader, writer = os.pipe()
    os.close(reader)
    with open(writer, "w") as pipe:
        configure(stream=pipe, env={})
    assert isinstance(formatter_of(root_logging), JsonFormatter)


def test_log_format_overrides_the_terminal_check(
    root_logging: logging.Logger, terminal: io.TextIOWrapper
) -> None:
    configure(stream=terminal, env={"LOG_FORMAT": "json"})
    assert isinstance(formatter_of(root_logging), JsonFormatter)
    configure(stream=io.StringIO(), env={"LOG_FORMAT": "console"})
    assert isinstance(formatter_of(root_logging), ConsoleFormatter)


def test_configure_reads_log_format_from_the_environment(
    root_logging: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "console")
    out = io.StringIO()
    configure(stream=out)
    logging.getLogger("zai_proxy.test").info("hello", extra={"who": "operator"})
    assert out.getvalue().rstrip("\n").endswith(" INFO    zai_proxy.test  hello  who=operator")


def test_a_bad_log_format_stops_configure(root_logging: logging.Logger) -> None:
    with pytest.raises(SettingsError) as caught:
        configure(stream=io.StringIO(), env={"LOG_FORMAT": "xml"})
    assert caught.value.variable == "LOG_FORMAT"


@pytest.mark.parametrize("command", [["serve"], ["dashboard"], ["demo", "--duration", "1"]])
def test_every_command_stops_with_one_line_naming_a_bad_log_format(
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    root_logging: logging.Logger,
) -> None:
    monkeypatch.setenv("ZAI_API_KEY", "k")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err == "zai-proxy: LOG_FORMAT='xml' is not valid: expected one of auto, json, console\n"


def test_the_demo_with_a_real_key_redacts_it_from_its_logs(
    monkeypatch: pytest.MonkeyPatch, root_logging: logging.Logger
) -> None:
    # With ZAI_API_KEY set the demo proxies to the real API; whatever logs the key (a
    # library's debug line, say) must print it redacted, as `serve` does.
    monkeypatch.setenv("ZAI_API_KEY", "sk-demo-real-key")
    monkeypatch.setenv("LOG_FORMAT", "json")
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(cli.trio, "run", lambda *args, **kwargs: None)
    assert cli.main(["demo", "--duration", "1"]) == 0
    logging.getLogger("zai_proxy.test").warning("calling with sk-demo-real-key")
    written = stream.getvalue()
    assert "calling with" in written and "sk-demo-real-key" not in written
