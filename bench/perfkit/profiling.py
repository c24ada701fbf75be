"""py-spy on zai-proxy under the c=1 and c=64 non-streaming loads, summarised."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .client import BlockingClient
from .load import run_wrk, write_wrk_script
from .plan import REQUEST, Plan
from .procfs import cpu_seconds
from .targets import BIN, services

_LINE = re.compile(r":\d+\)$")
_ROOT_FRAMES = ("<module> ", "main (zai_proxy/cli.py", "run (trio/", "unrolled_run (trio/")


def _package(frame: str) -> str:
    """`f (trio/_core/_run.py:12)` -> `trio`; the standard library's `json/decoder.py` -> json."""
    where = frame.rpartition("(")[2]
    return where.split("/")[0].split(".")[0].split(":")[0] or "?"


def summarise_profile(raw: Path, top: int = 15) -> str:
    """Self and cumulative share per function (lines merged) and self share per package,
    from py-spy's collapsed stacks."""
    self_count: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", f.strip()) for f in stack.split(";")]
        # py-spy may lead with the thread or process: not a function.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_count[frames[-1]] = self_count.get(frames[-1], 0) + count
        leaf = _package(frames[-1])
        packages[leaf] = packages.get(leaf, 0) + count
        for f in set(frames):
            if not f.startswith(_ROOT_FRAMES):
                cumulative[f] = cumulative.get(f, 0) + count
    if not total:
        return "  no samples"

    def ranked(counts: dict[str, int], n: int) -> list[str]:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
        return [f"  {100 * c / total:6.1f}  {name}" for name, c in best]

    return "\n".join(
        [f"  {total} samples (idle waits excluded)", "  self %  package"]
        + ranked(packages, 10)
        + ["  self %  function (file)"]
        + ranked(self_count, top)
        + ["  cumulative %  function (file), trio's run loop left out"]
        + ranked(cumulative, top + 10)
    )


def profile(out_dir: Path, seconds: float) -> None:
    """py-spy on zai-proxy under the c=1 and c=64 non-streaming loads."""
    py_spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/python -m pip install py-spy")
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan.quick()
    with (
        tempfile.TemporaryDirectory(prefix="zai-prof-") as tmp_name,
        services(plan, Path(tmp_name), with_litellm=False) as (_, peers, missing),
    ):
        zai = next((p for p in peers if p.name == "zai-proxy"), None)
        if zai is None:
            raise SystemExit(f"zai-proxy did not start: {missing.get('zai-proxy')}")
        for label in ("c1", "c64"):
            raw = out_dir / f"{label}.txt"
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(zai.pid), "--format", "raw", "--rate", "250"]
                + ["--duration", str(math.ceil(seconds) + 1), "--output", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            cpu_before = cpu_seconds(zai.pid or 0)
            deadline = time.monotonic() + seconds
            if label == "c1":
                count = 0
                with BlockingClient(zai.port) as client:
                    while time.monotonic() < deadline:
                        client.request(REQUEST)
                        count += 1
                rps = count / seconds
                load = f"{rps:.0f} req/s, one connection"
            else:
                script = write_wrk_script(Path(tmp_name) / "post.lua")
                result = run_wrk(zai.port, seconds, script)
                rps = result.rps
                load = f"{rps:.0f} req/s, wrk 64 connections"
            cpu_ms = 1000 * (cpu_seconds(zai.pid or 0) - cpu_before) / (rps * seconds)
            load += f", {cpu_ms:.2f} CPU ms per request (under py-spy)"
            spy.wait(seconds + 30)
            print(f"\n{label}: {load}; raw stacks in {raw}")
            print(summarise_profile(raw))
