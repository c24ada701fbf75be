"""zai-proxy against direct, nginx and LiteLLM: latency, throughput, streaming and memory.

One run starts a fast fixed-answer upstream (`perf_upstream.py`) and, in front of it,
zai-proxy (`zai-proxy serve`, limiter set high so it never throttles), nginx as a plain
reverse proxy, and LiteLLM's proxy (installed by this script into bench/.venv-litellm),
then measures all of them side by side with the same load generator and the same
~300-byte OpenAI chat request (POST /v1/chat/completions):

- added latency p50/p99 at concurrency 1 (non-streaming, targets interleaved);
- throughput and p99 at concurrency 64 (wrk when installed, else Python processes);
- streaming: added time to first event, added per-event delay and inter-event gap,
  events received against events sent;
- RSS with 1,000 open streams, and RSS over a steady soak (start, end, slope).

Each figure is also shown as a ratio to direct (x d) and to nginx (x n).  The machine is
shared: compare rows of one run, not runs.  Everything listens on 127.0.0.1.  The parts
live in bench/perfkit/; this file is the command line and the order of the run.

    python bench/perf.py                 # full run: 600 s soak
    python bench/perf.py --soak 120      # shorter soak
    python bench/perf.py --quick         # smoke check, about two minutes
    python bench/perf.py --profile /tmp/zai-prof   # py-spy on zai-proxy at c=1 and c=64
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import trio

from perfkit import report
from perfkit.latency import measure_c1, measure_c1_wrk
from perfkit.memory import measure_open_streams, soak
from perfkit.plan import Plan
from perfkit.profiling import profile
from perfkit.service import Service
from perfkit.streaming import measure_streams_c1
from perfkit.targets import services
from perfkit.throughput import measure_c64


def run(plan: Plan, with_litellm: bool) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="zai-perf-") as tmp_name,
        services(plan, Path(tmp_name), with_litellm) as (upstream, peers, missing),
    ):
        tmp = Path(tmp_name)
        targets = [Service("direct", upstream.port, None), *peers]
        print(report.header(plan, peers, missing), flush=True)
        print(report.c1_table(measure_c1(targets, plan), plan), flush=True)
        print(report.c1_wrk_table(measure_c1_wrk(targets, plan, tmp), plan), flush=True)
        print(report.streaming_table(measure_streams_c1(targets, plan), plan), flush=True)
        print(report.throughput_table(*measure_c64(targets, plan, tmp), plan), flush=True)
        print(report.soak_table(trio.run(soak, peers, plan), plan), flush=True)
        opened = {t.name: trio.run(measure_open_streams, t, plan.open_streams) for t in peers}
        print(report.open_streams_table(opened, plan))
        for name, reason in missing.items():
            print(f"{name}: not available: {reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="everything short: a smoke check")
    parser.add_argument("--soak", type=float, default=None, help="soak seconds (default 600)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM (reported)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="instead of the comparison, py-spy zai-proxy into DIR",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    args = parser.parse_args()
    if args.profile is not None:
        profile(args.profile, args.profile_seconds)
        return
    plan = Plan.quick() if args.quick else Plan.full(600.0)
    if args.soak is not None:
        plan = replace(plan, soak_seconds=args.soak)
    run(plan, with_litellm=not args.no_litellm)


if __name__ == "__main__":
    main()
