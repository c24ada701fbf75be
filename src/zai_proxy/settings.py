"""Settings for each service: one frozen dataclass each, parsed once from the environment.

Names and defaults follow the Go proxy this project replaces; flags on the command line
override the environment.  Every bad value stops start-up with a `SettingsError` whose
message is one line naming the variable, the value and what is allowed.  The upstream key
is never part of such a message, nor of any repr.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

from . import __version__
from .errors import SettingsError

__all__ = [
    "LOG_FORMATS",
    "VARIANTS",
    "DashboardSettings",
    "ProxySettings",
    "log_format_from_env",
    "parse_duration",
    "parse_listen_addr",
    "without_userinfo",
]

T = TypeVar("T")

VARIANTS = ("production", "canary")
# auto: readable lines on a terminal, JSON lines otherwise (logs.py).
LOG_FORMATS = ("auto", "json", "console")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``5s``, ``1m30s``, ``250ms``, ``24h``) into seconds.

    A bare number is taken as seconds, which is what most people mean by ``30``.
    """
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError("duration must be finite")
        return seconds
    sign = 1.0
    if value[0] in "+-":
        sign = -1.0 if value[0] == "-" else 1.0
        value = value[1:]
    pos = 0
    total = 0.0
    while pos < len(value):
        match = _DURATION_PART.match(value, pos)
        if match is None:
            raise ValueError(f"not a duration: {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def parse_listen_addr(text: str) -> tuple[str, int]:
    """``:8080`` -> ("0.0.0.0", 8080); ``127.0.0.1:0`` -> ("127.0.0.1", 0); ``[::1]:80``."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError("expected HOST:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "0.0.0.0"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be 0-65535")
    return host, int(port_text)


class _Reader:
    """Reads typed values from a mapping, raising one-line `SettingsError`s."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def _get(
        self,
        name: str,
        default: str,
        parse: Callable[[str], T],
        allowed: str,
        shown: Callable[[str], str] = str,
    ) -> T:
        raw = self._env.get(name)
        text = default if raw is None or raw.strip() == "" else raw
        try:
            return parse(text)
        except (ValueError, TypeError):
            raise SettingsError(name, shown(text), allowed) from None

    def text(self, name: str, default: str) -> str:
        raw = self._env.get(name)
        return default if raw is None else raw.strip()

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        def parse(text: str) -> int:
            value = int(text.strip())
            if value < minimum or (maximum is not None and value > maximum):
                raise ValueError
            return value

        upper = "" if maximum is None else f" and <= {maximum}"
        return self._get(name, str(default), parse, f"an integer >= {minimum}{upper}")

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float,
        maximum: float | None = None,
        exclusive_minimum: bool = False,
        exclusive_maximum: bool = False,
    ) -> float:
        def parse(text: str) -> float:
            value = float(text.strip())
            if not math.isfinite(value):
                raise ValueError
            if value < minimum or (exclusive_minimum and value == minimum):
                raise ValueError
            if maximum is not None and (
                value > maximum or (exclusive_maximum and value == maximum)
            ):
                raise ValueError
            return value

        low = f"> {minimum:g}" if exclusive_minimum else f">= {minimum:g}"
        high = ""
        if maximum is not None:
            high = f" and < {maximum:g}" if exclusive_maximum else f" and <= {maximum:g}"
        return self._get(name, repr(default), parse, f"a number {low}{high}")

    def duration(
        self, name: str, default: str, *, minimum: float = 0.0, maximum: float | None = None
    ) -> float:
        def parse(text: str) -> float:
            value = parse_duration(text)
            if value < minimum or (maximum is not None and value > maximum):
                raise ValueError
            return value

        allowed = f"a duration like 500ms, 5s or 1m30s, at least {minimum:g}s"
        if maximum is not None:
            allowed += f" and at most {maximum:g}s"
        return self._get(name, default, parse, allowed)

    def boolean(self, name: str, default: bool) -> bool:
        def parse(text: str) -> bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError

        return self._get(name, "true" if default else "false", parse, "true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def parse(text: str) -> str:
            value = text.strip()
            if value not in choices:
                raise ValueError
            return value

        return self._get(name, default, parse, "one of " + ", ".join(choices))

    def limiter_backend(self, name: str, default: str) -> str:
        def parse(text: str) -> str:
            value = text.strip()
            if value == "memory":
                return value
            parts = urlsplit(value)
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ValueError
            if parts.query or parts.fragment:
                raise ValueError
            parts.port  # noqa: B018 - raises ValueError on a bad port
            database = parts.path.strip("/")
            if database and not (database.isdigit() and int(database) <= 10_000):
                raise ValueError
            return value

        return self._get(
            name,
            default,
            parse,
            "memory, or a redis:// or rediss:// URL (HOST:PORT, optional /DB number)",
            shown=_redacted_url,
        )

    def namespace(self, name: str) -> str | None:
        def parse(text: str) -> str | None:
            value = text.strip()
            if value == "":
                return None
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}", value):
                raise ValueError
            return value

        return self._get(name, "", parse, "1-100 letters, digits and _ . : - (or empty)")

    def listen_addr(self, name: str, default: str) -> tuple[str, int]:
        return self._get(name, default, parse_listen_addr, "HOST:PORT or :PORT, port 0-65535")

    def http_url(self, name: str, default: str) -> str:
        def parse(text: str) -> str:
            value = text.strip().rstrip("/")
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError
            if parts.query or parts.fragment or parts.username or parts.password:
                raise ValueError
            parts.port  # noqa: B018 - raises ValueError on a bad port
            return value

        return self._get(
            name,
            default,
            parse,
            "an http:// or https:// URL without userinfo or query",
            shown=_redacted_url,
        )


def _redacted_url(text: str) -> str:
    """A bad URL as it may be shown: a password or query (which may hold a key) hidden."""
    try:
        parts = urlsplit(text.strip())
        if parts.password is not None:
            host = parts.netloc.rpartition("@")[2]
            parts = parts._replace(netloc=f"{parts.username}:***@{host}")
        if parts.query:
            parts = parts._replace(query="***")
        if parts.fragment:
            parts = parts._replace(fragment="***")
        return parts.geturl()
    except ValueError:
        return "(not a URL)"


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Everything `zai-proxy serve` needs; built by `from_env`."""

    api_key: str = field(repr=False)
    target_url: str = "https://api.z.ai/api/anthropic"
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    variant: str = "production"
    max_workers: int = 10
    max_websockets: int = 100
    """WebSocket sessions open at once (their own cap, apart from MAX_WORKERS); 0: none."""
    max_retries: int = 3
    retry_backoff_base: float = 1.0
    retry_after_cap: float = 60.0
    token_counting_enabled: bool = True
    token_accuracy_sample: float = 0.05
    tokenizer_model: str = "glm-4"
    rate_limit_initial: float = 10.0
    rate_limit_min: float = 1.0
    rate_limit_max: float = 50.0
    rate_limit_ceiling_alpha: float = 0.3
    rate_limit_hold_margin: float = 0.02
    rate_limit_probe_interval: int = 10
    rate_limit_window: float = 30.0
    rate_limit_max_wait: float = 30.0
    rate_limit_backend: str = field(default="memory", repr=False)
    """`memory`, or a redis:// or rediss:// URL (which may hold a password: never shown)."""
    rate_limit_backend_password: str | None = field(default=None, repr=False)
    rate_limit_namespace: str | None = None
    rate_limit_backend_timeout: float = 0.25
    max_body_bytes: int = 32 * 1024 * 1024
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    upstream_write_timeout: float = 60.0
    upstream_pool_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    client_body_timeout: float = 30.0
    client_write_timeout: float = 60.0
    admin_token: str | None = field(default=None, repr=False)
    log_level: str = "info"
    log_format: str = "auto"
    build_version: str = __version__
    build_commit: str = "unknown"
    build_time: str = "unknown"

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, require_key: bool = True) -> ProxySettings:
        read = _Reader(env)
        api_key = read.text("ZAI_API_KEY", "")
        if require_key and not api_key:
            raise SettingsError("ZAI_API_KEY", "", "a non-empty API key (it is required)")
        host, port = read.listen_addr("LISTEN_ADDR", ":8080")
        minimum = read.number("RATE_LIMIT_MIN", 1.0, minimum=0.0, exclusive_minimum=True)
        maximum = read.number("RATE_LIMIT_MAX", 50.0, minimum=0.0, exclusive_minimum=True)
        if maximum < minimum:
            raise SettingsError(
                "RATE_LIMIT_MAX", repr(maximum), f"a number >= RATE_LIMIT_MIN ({minimum:g})"
            )
        initial = read.number("RATE_LIMIT_INITIAL", 10.0, minimum=minimum, maximum=maximum)
        admin_token = read.text("ADMIN_TOKEN", "") or None
        return cls(
            api_key=api_key,
            target_url=read.http_url("ZAI_TARGET_URL", "https://api.z.ai/api/anthropic"),
            listen_host=host,
            listen_port=port,
            variant=read.choice("DEPLOYMENT_VARIANT", "production", VARIANTS),
            max_workers=read.integer("MAX_WORKERS", 10, minimum=1, maximum=100_000),
            max_websockets=read.integer("MAX_WEBSOCKETS", 100, minimum=0, maximum=100_000),
            max_retries=read.integer("MAX_RETRIES", 3, minimum=0, maximum=20),
            retry_backoff_base=read.duration("RETRY_BACKOFF_BASE", "1s"),
            retry_after_cap=read.duration("RETRY_AFTER_CAP", "60s"),
            token_counting_enabled=read.boolean("TOKEN_COUNTING_ENABLED", True),
            token_accuracy_sample=read.number(
                "TOKEN_ACCURACY_SAMPLE", 0.05, minimum=0.0, maximum=1.0
            ),
            tokenizer_model=read.text("TOKENIZER_MODEL", "glm-4") or "glm-4",
            rate_limit_initial=initial,
            rate_limit_min=minimum,
            rate_limit_max=maximum,
            rate_limit_ceiling_alpha=read.number(
                "RATE_LIMIT_CEILING_ALPHA", 0.3, minimum=0.0, maximum=1.0, exclusive_minimum=True
            ),
            rate_limit_hold_margin=read.number(
                "RATE_LIMIT_HOLD_MARGIN", 0.02, minimum=0.0, maximum=1.0, exclusive_maximum=True
            ),
            rate_limit_probe_interval=read.integer("RATE_LIMIT_PROBE_INTERVAL", 10, minimum=1),
            rate_limit_window=read.duration("RATE_LIMIT_WINDOW", "30s", minimum=0.001),
            rate_limit_max_wait=read.duration("RATE_LIMIT_MAX_WAIT", "30s"),
            rate_limit_backend=read.limiter_backend("RATE_LIMIT_BACKEND", "memory"),
            rate_limit_backend_password=read.text("RATE_LIMIT_BACKEND_PASSWORD", "") or None,
            rate_limit_namespace=read.namespace("RATE_LIMIT_NAMESPACE"),
            rate_limit_backend_timeout=read.duration(
                "RATE_LIMIT_BACKEND_TIMEOUT", "250ms", minimum=0.001, maximum=10.0
            ),
            max_body_bytes=read.integer("MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1),
            upstream_connect_timeout=read.duration(
                "UPSTREAM_CONNECT_TIMEOUT", "10s", minimum=0.001
            ),
            upstream_read_timeout=read.duration("UPSTREAM_READ_TIMEOUT", "300s", minimum=0.001),
            upstream_write_timeout=read.duration("UPSTREAM_WRITE_TIMEOUT", "60s", minimum=0.001),
            upstream_pool_timeout=read.duration("UPSTREAM_POOL_TIMEOUT", "10s", minimum=0.001),
            shutdown_timeout=read.duration("SHUTDOWN_TIMEOUT", "30s"),
            client_body_timeout=read.duration("CLIENT_BODY_TIMEOUT", "30s", minimum=0.001),
            client_write_timeout=read.duration("CLIENT_WRITE_TIMEOUT", "60s", minimum=0.001),
            admin_token=admin_token,
            log_level=read.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=log_format_from_env(env),
            # The image's build arguments (Dockerfile): version, commit, time of the build.
            build_version=read.text("ZAI_PROXY_VERSION", __version__) or __version__,
            build_commit=read.text("BUILD_COMMIT", "unknown") or "unknown",
            build_time=read.text("BUILD_TIME", "unknown") or "unknown",
        )


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """Everything `zai-proxy dashboard` needs; built by `from_env`."""

    scrape_targets: tuple[str, ...] = ("http://zai-proxy:8080/metrics",)
    scrape_interval: float = 5.0
    scrape_timeout: float = 3.0
    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    db_path: str = "/data/dashboard.db"
    retention_5s: float = 24 * 3600.0
    retention_1m: float = 168 * 3600.0
    log_level: str = "info"
    log_format: str = "auto"
    # dns+ targets are re-resolved every this many scrape intervals.
    dns_refresh_scrapes: int = 6

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DashboardSettings:
        read = _Reader(env)
        raw_targets = read.text("SCRAPE_TARGETS", "http://zai-proxy:8080/metrics")
        targets: list[str] = []
        for item in raw_targets.split(","):
            if not item.strip():
                continue
            if not _scrape_target_ok(item.strip()):
                raise SettingsError(
                    "SCRAPE_TARGETS",
                    _redacted_url(item.strip()),
                    "comma-separated http(s) URLs, or dns+http(s)://NAME[:PORT]/PATH "
                    "for every address NAME resolves to",
                )
            targets.append(item.strip())
        if not targets:
            raise SettingsError("SCRAPE_TARGETS", raw_targets, "at least one http(s) URL")
        host, port = read.listen_addr("LISTEN_ADDR", ":8080")
        interval = read.duration("SCRAPE_INTERVAL", "5s", minimum=0.01)
        timeout = read.duration("SCRAPE_TIMEOUT", "3s", minimum=0.001)
        if timeout > interval:
            raise SettingsError(
                "SCRAPE_TIMEOUT", f"{timeout:g}s", f"a duration <= SCRAPE_INTERVAL ({interval:g}s)"
            )
        return cls(
            scrape_targets=tuple(targets),
            scrape_interval=interval,
            scrape_timeout=timeout,
            listen_host=host,
            listen_port=port,
            db_path=read.text("DB_PATH", "/data/dashboard.db") or "/data/dashboard.db",
            retention_5s=read.duration("RETENTION_5S", "24h", minimum=60.0),
            retention_1m=read.duration("RETENTION_1M", "168h", minimum=60.0),
            log_level=read.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=log_format_from_env(env),
            dns_refresh_scrapes=read.integer("DNS_REFRESH_SCRAPES", 6, minimum=1, maximum=100_000),
        )


def log_format_from_env(env: Mapping[str, str]) -> str:
    """LOG_FORMAT: ``auto`` (the default), ``json`` or ``console``."""
    return _Reader(env).choice("LOG_FORMAT", "auto", LOG_FORMATS)


def _scrape_target_ok(url: str) -> bool:
    # dashboard/targets.py reads the dns+ form; this only decides whether start-up may go on.
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if parts.scheme.lower() in ("dns+http", "dns+https"):
        name = parts.hostname or ""
        # A name to resolve: not empty, not an IP address.
        return bool(name) and ":" not in name and not re.fullmatch(r"[\d.]+", name)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def without_userinfo(url: str) -> str:
    """`http://user:pass@host/metrics` -> `http://host/metrics`, for showing and logging."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=netloc).geturl()
