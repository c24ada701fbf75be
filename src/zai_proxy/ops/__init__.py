"""The operator's tools, as `zai-proxy` subcommands run against live deployments.

- `check` (check.py): is a deployed proxy, and its dashboard, working?
- `loadtest` (loadtest.py): simulated agents against a URL; with `--compare`, production
  and canary side by side and the go/no-go verdict of the canary alert rules.
- `evaluate` (evaluate.py): the local token count against the API's, over a shipped
  corpus (corpus.jsonl) of text, code, CJK and tool-call prompts.

Each module keeps its judgement in pure functions (report.py holds the shared
percentile and table code) and its network part in one short trio + httpx shell; their
command lines are in commands.py, which imports a tool only to run it.
"""

from __future__ import annotations
