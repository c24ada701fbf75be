"""The operator tools' command lines: `zai-proxy check | loadtest | evaluate`.

Only argparse lives here, so `zai-proxy --help` and the other commands do not import the
tools (which pull in the proxy and the simulator's agents); `run` imports the one asked
for.
"""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["TOOLS", "add_parsers", "http_url", "run"]

TOOLS = ("check", "loadtest", "evaluate")


def add_parsers(commands: Any) -> None:
    """Add a subparser per tool to `commands` (argparse's subparsers action)."""
    _check(commands)
    _loadtest(commands)
    _evaluate(commands)


def run(args: argparse.Namespace) -> int:
    """Run the tool `args.command` names; its exit code."""
    module = importlib.import_module(f"{__package__}.{args.command}")
    code: int = module.run(args)
    return code


def http_url(value: str) -> str:
    """argparse type: an http(s) URL with a host."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// or https:// URL")
    return value


def _check(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "check",
        help="verify a running proxy (and dashboard): health, requests, metrics, limiter",
        description="Verify a running proxy the way an operator would after a deploy: "
        "/healthz and its version, a real non-streaming and a streaming Messages request "
        "through it, X-Token-Input on both answers, every seed metric with the variant "
        "label, the limiter's state, and with --dashboard the dashboard's /api/status "
        "seeing both variants.  Needs no key: the proxy holds it.  One line per check; "
        "exit 0 when all pass, 1 when any fails, 2 on bad arguments.",
    )
    parser.add_argument(
        "url", type=http_url, help="the proxy's base URL, e.g. http://zai-proxy:8080/api/anthropic"
    )
    parser.add_argument("--model", default="glm-4.6", help="model to ask (default glm-4.6)")
    parser.add_argument(
        "--dashboard", type=http_url, metavar="URL", help="also check this dashboard"
    )
    parser.add_argument(
        "--openai",
        action="store_true",
        help="also send an OpenAI chat completion and its stream (upstreams that serve them)",
    )
    parser.add_argument(
        "--timeout", type=_positive(float), default=30.0, help="seconds per request (default 30)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not number > 0 or not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{value!r} must be above 0")
        return number

    return parse


def _loadtest(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "loadtest",
        help="load-test a proxy with simulated agents; --compare: canary go/no-go",
        description="Send the demo's simulated agents' requests (streaming and not, short "
        "and long, cached system prompts) through the proxy at URL: --agents at once, "
        "each sending its next request when the last is answered, for --duration seconds "
        "or --requests requests.  Prints a table: requests, status counts, latency "
        "p50/p95/p99, time to first byte of streams, output tokens/s, 429s and retries.  "
        "With --compare URL2, URL (production) and URL2 (canary) get the same requests "
        "side by side, and the canary alert rules' thresholds give a GO or NO-GO.  "
        "Exit 0 on GO (without --compare: when any request succeeded), 1 on NO-GO (or "
        "none succeeded), 2 on bad arguments.  Sends real requests: against a real "
        "upstream they spend quota.",
    )
    parser.add_argument("url", type=http_url, help="the proxy's base URL (production)")
    parser.add_argument(
        "--compare", type=http_url, metavar="URL2", help="the canary's base URL: judge it"
    )
    parser.add_argument(
        "--agents", type=_positive(int), default=8, help="concurrent agents (default 8)"
    )
    parser.add_argument(
        "--duration",
        type=_positive(float),
        default=None,
        help="seconds to send for (default 30, unless --requests is given)",
    )
    parser.add_argument(
        "--requests",
        type=_positive(int),
        default=None,
        help="requests to send per target, retries included",
    )
    parser.add_argument(
        "--model", default=None, help="model for every request (default: the agents' mix)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        choices=range(0, 11),
        metavar="N",
        help="times a request is sent again after 429 or 503 (default 2)",
    )
    parser.add_argument(
        "--timeout", type=_positive(float), default=60.0, help="seconds per request (60)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the agents' requests")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="a live progress line on stderr even when it is not a terminal",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")


def _evaluate(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "evaluate",
        help="local token counts against the API's, over a corpus of prompts",
        description="Send a corpus of prompts (shipped: prose, code, CJK and tool calls) "
        "through the proxy at URL, or straight to an upstream with --upstream (key from "
        "ZAI_API_KEY, never printed), and compare the proxy's local input-token count of "
        "each with the count the API reports: mean and p95 relative error and bias, by "
        "kind.  Exit 0 when every prompt was counted, 1 when a request failed, 2 on bad "
        "arguments.",
    )
    parser.add_argument("url", nargs="?", type=http_url, help="the proxy's base URL")
    parser.add_argument(
        "--upstream",
        type=http_url,
        metavar="URL",
        help="send straight to this upstream base URL instead, with ZAI_API_KEY",
    )
    parser.add_argument("--model", default="glm-4.6", help="model to ask (default glm-4.6)")
    parser.add_argument(
        "--corpus", type=Path, default=None, help="a JSONL corpus instead of the shipped one"
    )
    parser.add_argument("--prompts", action="store_true", help="also list every prompt's counts")
    parser.add_argument(
        "--timeout", type=_positive(float), default=60.0, help="seconds per request (default 60)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
