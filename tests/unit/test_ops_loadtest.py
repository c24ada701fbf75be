"""`zai-proxy loadtest`'s core: the figures of a run, the one-to-one token comparison and
the go/no-go verdict, whose thresholds are read back from the canary alert rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from zai_proxy.ops.loadtest import (
    THRESHOLDS,
    Sample,
    Summary,
    format_summaries,
    format_verdict,
    summarize,
    token_delta,
    verdict,
)

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"


def rule(name: str) -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for group in groups:
        for entry in group["rules"]:
            if entry.get("alert") == name:
                return " ".join(str(entry["expr"]).split())
    raise AssertionError(f"{name} is not in {RULES}")


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)
    return float(match.group(1))


def test_the_verdicts_thresholds_are_the_canary_alert_rules() -> None:
    assert THRESHOLDS.max_error_rate == number(r"> ([\d.]+)$", rule("ZaiProxyCanaryHighErrorRate"))
    degraded = rule("ZaiProxyCanaryDegradedVsProduction")
    assert THRESHOLDS.error_ratio == number(r"\) > ([\d.]+) \*", degraded)
    assert THRESHOLDS.error_floor == number(r"\+ ([\d.]+) \)$", degraded)
    assert THRESHOLDS.max_p95_s == number(r"\) > ([\d.]+)$", rule("ZaiProxyCanaryHighLatency"))
    slower = rule("ZaiProxyCanarySlowerThanProduction")
    assert THRESHOLDS.p95_ratio == number(r"> ([\d.]+) \*", slower)


def sample(n: int, status: int | None = 200, latency: float = 0.1, **more: Any) -> Sample:
    return Sample(key=(0, n), stream=False, status=status, latency=latency, **more)


def test_summary_counts_statuses_errors_and_percentiles() -> None:
    samples = [
        *(sample(i, latency=0.1 * (i + 1), output_tokens=10) for i in range(8)),
        sample(8, 429, 0.01),
        sample(9, 200, 0.05, retry=True, output_tokens=10),
        sample(10, 502, 0.2),
        sample(11, None, 5.0),  # no answer: an error, but no latency
        Sample((0, 12), True, 200, 0.3, ttft=0.05, broken_stream=True),
    ]
    s = summarize(samples, elapsed=2.0, proxy_retries=3.0)
    assert s.requests == 13
    assert s.statuses == {"200": 10, "429": 1, "502": 1, "no answer": 1}
    assert s.errors == 3 and s.error_rate == pytest.approx(3 / 13)
    assert s.rate_limited == 1 and s.retries == 1 and s.proxy_retries == 3.0
    assert s.output_tokens == 90 and s.tokens_per_s == pytest.approx(45.0)
    answered = sorted([0.1 * (i + 1) for i in range(8)] + [0.01, 0.05, 0.2, 0.3])
    assert s.latency_p50 == pytest.approx((answered[5] + answered[6]) / 2)
    assert s.latency_p99 is not None and s.latency_p99 < 0.8 + 1e-9  # 5 s had no answer
    assert s.ttft_p50 == pytest.approx(0.05) and s.ttft_p95 == pytest.approx(0.05)


def test_summary_of_nothing_has_no_rates() -> None:
    s = summarize([], elapsed=1.0)
    assert s.requests == 0 and s.error_rate is None and s.latency_p95 is None


def figures(error_rate: float, p95: float) -> Summary:
    samples = [
        sample(i, 500 if i < round(error_rate * 1000) else 200, latency=p95) for i in range(1000)
    ]
    return summarize(samples, elapsed=10.0)


def failed(result: Any) -> list[str]:
    return [c.name for c in result.criteria if not c.ok]


def test_a_canary_like_production_is_go() -> None:
    result = verdict(figures(0.001, 0.5), figures(0.001, 0.5), 0.0)
    assert result.go and failed(result) == []
    assert format_verdict(result).splitlines()[0] == "verdict: GO"


def test_a_canary_over_5_percent_errors_is_no_go() -> None:
    result = verdict(figures(0.04, 0.5), figures(0.06, 0.5), 0.0)
    assert not result.go and failed(result) == ["error rate"]
    assert "FAIL  error rate" in format_verdict(result)


def test_a_canary_with_over_twice_productions_errors_plus_1_percent_is_no_go() -> None:
    # 2 x (0.5 % + 1 %) = 3 %: 3.5 % is under the absolute 5 % but over this.
    assert failed(verdict(figures(0.005, 0.5), figures(0.035, 0.5), 0.0)) == [
        "errors vs production"
    ]
    assert verdict(figures(0.005, 0.5), figures(0.025, 0.5), 0.0).go


def test_a_canary_slower_than_1_5_times_production_or_10_s_is_no_go() -> None:
    assert failed(verdict(figures(0, 1.0), figures(0, 1.6), 0.0)) == ["p95 vs production"]
    assert verdict(figures(0, 1.0), figures(0, 1.4), 0.0).go
    assert failed(verdict(figures(0, 9.0), figures(0, 11.0), 0.0)) == ["p95 latency"]


def test_token_counts_more_than_10_percent_apart_are_no_go() -> None:
    assert failed(verdict(figures(0, 1.0), figures(0, 1.0), 0.11)) == ["token counts"]
    assert verdict(figures(0, 1.0), figures(0, 1.0), 0.09).go
    unknown = verdict(figures(0, 1.0), figures(0, 1.0), None)
    assert unknown.go and "no request both answered" in unknown.criteria[-1].detail


def test_a_side_that_answered_nothing_is_no_go() -> None:
    nothing = summarize([sample(0, None)], elapsed=1.0)
    result = verdict(figures(0, 1.0), nothing, 0.0)
    assert not result.go and result.criteria[0].detail == "canary answered no request"


def test_token_delta_compares_the_same_request_one_to_one() -> None:
    production = [
        Sample((0, 0), False, 200, 0.1, token_input=100),
        Sample((0, 1), False, 200, 0.1, token_input=50),
        Sample((1, 0), False, 500, 0.1),  # production failed it: not compared
        Sample((1, 1), False, 200, 0.1, token_input=10),
    ]
    canary = [
        Sample((0, 0), False, 200, 0.1, token_input=110),  # 10 % apart
        Sample((0, 1), False, 200, 0.1, token_input=45),  # 10 % apart
        Sample((1, 0), False, 200, 0.1, token_input=999),
        Sample((1, 1), False, 200, 0.1),  # no header where production had one: 100 %
        Sample((2, 0), False, 200, 0.1, token_input=5),  # production never sent it
    ]
    delta, pairs = token_delta(production, canary)
    assert pairs == 3
    assert delta == pytest.approx((0.1 + 0.1 + 1.0) / 3)
    assert token_delta(production, []) == (None, 0)


def test_the_table_has_a_column_per_target_and_a_row_per_status() -> None:
    production = summarize([sample(0), sample(1, 429)], elapsed=1.0)
    canary = summarize([sample(0), sample(1, 503)], elapsed=1.0)
    lines = format_summaries([("production", production), ("canary", canary)]).splitlines()
    assert lines[0].split() == ["production", "canary"]
    rows = {line[:26].strip(): line[26:].split() for line in lines[1:]}
    assert rows["requests"] == ["2", "2"]
    assert rows["200"] == ["1", "1"]
    assert rows["429"] == ["1", "0"]
    assert rows["503"] == ["0", "1"]
    assert rows["429s seen"] == ["1", "0"]
