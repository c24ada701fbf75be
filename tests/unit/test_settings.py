"""Settings: Go-style durations, defaults, and one clear line per bad value."""

from __future__ import annotations

import pytest

from zai_proxy.errors import SettingsError
from zai_proxy.settings import DashboardSettings, ProxySettings, parse_duration, parse_listen_addr


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("5s", 5.0),
        ("1m30s", 90.0),
        ("250ms", 0.25),
        ("24h", 86400.0),
        ("168h", 604800.0),
        ("1.5s", 1.5),
        ("2h45m", 9900.0),
        ("100us", 0.0001),
        ("30", 30.0),
    ],
)
def test_go_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "1m30", "abc", "5 s", "inf"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_listen_addr_forms() -> None:
    assert parse_listen_addr(":8080") == ("0.0.0.0", 8080)
    assert parse_listen_addr("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen_addr("[::1]:9000") == ("::1", 9000)


def test_proxy_defaults_are_the_seeds() -> None:
    s = ProxySettings.from_env({"ZAI_API_KEY": "k"})
    assert s.target_url == "https://api.z.ai/api/anthropic"
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 8080)
    assert s.variant == "production"
    assert (s.max_workers, s.max_retries) == (10, 3)
    assert s.token_counting_enabled is True and s.tokenizer_model == "glm-4"
    assert (s.rate_limit_initial, s.rate_limit_min, s.rate_limit_max) == (10.0, 1.0, 50.0)
    assert (s.rate_limit_ceiling_alpha, s.rate_limit_hold_margin) == (0.3, 0.02)
    assert s.rate_limit_probe_interval == 10
    assert (s.retry_backoff_base, s.rate_limit_window, s.rate_limit_max_wait) == (1.0, 30.0, 30.0)
    assert s.max_body_bytes == 32 * 1024 * 1024
    assert s.admin_token is None


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("MAX_WORKERS", "0", "MAX_WORKERS='0' is not valid: expected an integer >= 1"),
        ("MAX_RETRIES", "-1", "MAX_RETRIES='-1' is not valid: expected an integer >= 0"),
        (
            "DEPLOYMENT_VARIANT",
            "blue",
            "DEPLOYMENT_VARIANT='blue' is not valid: expected one of production, canary",
        ),
        (
            "TOKEN_COUNTING_ENABLED",
            "maybe",
            "TOKEN_COUNTING_ENABLED='maybe' is not valid: expected true or false",
        ),
        (
            "RATE_LIMIT_CEILING_ALPHA",
            "0",
            "RATE_LIMIT_CEILING_ALPHA='0' is not valid: expected a number > 0",
        ),
        (
            "RATE_LIMIT_HOLD_MARGIN",
            "1",
            "RATE_LIMIT_HOLD_MARGIN='1' is not valid: expected a number >= 0 and < 1",
        ),
        ("RATE_LIMIT_WINDOW", "soon", "RATE_LIMIT_WINDOW='soon' is not valid: expected a duration"),
        ("RETRY_BACKOFF_BASE", "-1s", "RETRY_BACKOFF_BASE='-1s' is not valid: expected a duration"),
        ("LISTEN_ADDR", "8080", "LISTEN_ADDR='8080' is not valid: expected HOST:PORT or :PORT"),
        ("ZAI_TARGET_URL", "ftp://x", "ZAI_TARGET_URL='ftp://x' is not valid: expected an http"),
        ("ZAI_TARGET_URL", "https://u@x/api", "ZAI_TARGET_URL='https://u@x/api' is not valid"),
        (
            "RATE_LIMIT_INITIAL",
            "500",
            "RATE_LIMIT_INITIAL='500' is not valid: expected a number >= 1 and <= 50",
        ),
        ("MAX_BODY_BYTES", "big", "MAX_BODY_BYTES='big' is not valid: expected an integer >= 1"),
    ],
)
def test_bad_value_names_variable_value_and_what_is_allowed(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        ProxySettings.from_env({"ZAI_API_KEY": "k", name: value})
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text and caught.value.variable == name


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("https://user:hunter2-secret@x/api", "'https://user:***@x/api'"),
        ("https://x/api?key=hunter2-secret", "'https://x/api?***'"),
        ("https://x/api#hunter2-secret", "'https://x/api#***'"),
    ],
)
def test_a_bad_target_url_is_named_without_its_secret(value: str, shown: str) -> None:
    with pytest.raises(SettingsError) as caught:
        ProxySettings.from_env({"ZAI_API_KEY": "k", "ZAI_TARGET_URL": value})
    text = str(caught.value)
    assert text.startswith(f"ZAI_TARGET_URL={shown} is not valid")
    assert "hunter2" not in text and "hunter2" not in repr(caught.value.value)


def test_missing_key_is_an_error() -> None:
    with pytest.raises(SettingsError) as caught:
        ProxySettings.from_env({})
    assert caught.value.variable == "ZAI_API_KEY"


def test_rate_limit_max_below_min_is_an_error() -> None:
    with pytest.raises(SettingsError) as caught:
        ProxySettings.from_env({"ZAI_API_KEY": "k", "RATE_LIMIT_MIN": "5", "RATE_LIMIT_MAX": "2"})
    assert caught.value.variable == "RATE_LIMIT_MAX"


def test_dashboard_defaults_and_targets() -> None:
    s = DashboardSettings.from_env({"SCRAPE_TARGETS": "http://a:8080/metrics, http://b/metrics"})
    assert s.scrape_targets == ("http://a:8080/metrics", "http://b/metrics")
    assert (s.scrape_interval, s.scrape_timeout) == (5.0, 3.0)
    assert (s.retention_5s, s.retention_1m) == (86400.0, 604800.0)
    assert s.db_path == "/data/dashboard.db"


def test_dashboard_bad_target_hides_userinfo() -> None:
    with pytest.raises(SettingsError) as caught:
        DashboardSettings.from_env({"SCRAPE_TARGETS": "ftp://user:secret@host/metrics"})
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("value", ["json", "console", "auto", " console ", ""])
def test_log_format_is_read_by_both_services(value: str) -> None:
    expected = value.strip() or "auto"
    assert ProxySettings.from_env({"ZAI_API_KEY": "k", "LOG_FORMAT": value}).log_format == expected
    assert DashboardSettings.from_env({"LOG_FORMAT": value}).log_format == expected


@pytest.mark.parametrize(
    "read",
    [lambda env: ProxySettings.from_env({"ZAI_API_KEY": "k", **env}), DashboardSettings.from_env],
)
def test_a_bad_log_format_names_the_variable_and_the_formats(read: object) -> None:
    with pytest.raises(SettingsError) as caught:
        read({"LOG_FORMAT": "xml"})  # type: ignore[operator]
    assert str(caught.value) == "LOG_FORMAT='xml' is not valid: expected one of auto, json, console"
