"""The page as an install delivers it: an sdist built from a clean copy of the checkout,
the wheel built from that sdist (what pip does with a release), installed into a fresh
virtualenv outside the tree, and its `zai-proxy dashboard` opened in Chromium.

The virtualenv gets the wheel alone (`--no-deps`); its dependencies come from the test
run's own site-packages through a .pth line, which adds that directory to sys.path
without running the .pth files in it, so the checkout's editable install stays out.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import trio
from playwright import sync_api as playwright_sync

from tests.conftest import UPSTREAM_KEY, proxy_env, require_tool
from tests.e2e.test_page import CHROMIUM_ARGS, PANELS, WAIT_MS, ServerThread, post_forever
from zai_proxy.proxy import serve_proxy
from zai_proxy.settings import ProxySettings
from zai_proxy.sim.upstream import SimUpstream, UpstreamConfig

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Built:
    checkout: Path
    sdist: Path
    wheel: Path


def _clean_checkout(dest: Path) -> None:
    """What a clone of this work tree would hold: the files git tracks and the new ones it
    does not ignore, as they are now (no .venv, node_modules, build output or caches)."""
    git = require_tool("git")
    listed = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        source = ROOT / os.fsdecode(name)
        if source.is_file():  # a tracked file deleted in the work tree is not there
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    checkout = tmp_path_factory.mktemp("checkout")
    _clean_checkout(checkout)
    dist = tmp_path_factory.mktemp("dist")
    # `python -m build`: the sdist, then the wheel from the unpacked sdist.
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(checkout)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = dist.glob("zai_proxy-*.tar.gz")
    (wheel,) = dist.glob("zai_proxy-*.whl")
    return Built(checkout=checkout, sdist=sdist, wheel=wheel)


def _files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def test_the_sdist_and_the_wheel_carry_the_page_and_every_module(built: Built) -> None:
    page = _files(built.checkout / "static")
    # Every module and every data file the package reads (py.typed, ops/corpus.jsonl).
    modules = _files(built.checkout / "src" / "zai_proxy")
    assert {"py.typed", "ops/corpus.jsonl", "proxy/limiter.py"} <= set(modules)
    assert {"index.html", "app.js", "style.css", "vendor/uPlot.iife.min.js"} <= set(page)

    with tarfile.open(built.sdist) as sdist:
        (top,) = {name.split("/", 1)[0] for name in sdist.getnames()}
        in_sdist = set(sdist.getnames())
    assert not [f for f in page if f"{top}/static/{f}" not in in_sdist]

    with zipfile.ZipFile(built.wheel) as wheel:
        in_wheel = set(wheel.namelist())
        assert not [f for f in page if f"zai_proxy/static/{f}" not in in_wheel]
        assert not [f for f in modules if f"zai_proxy/{f}" not in in_wheel]
        changed = [
            f
            for f in page
            if wheel.read(f"zai_proxy/static/{f}") != (built.checkout / "static" / f).read_bytes()
        ]
        assert changed == []
    assert not [n for n in in_wheel if n.startswith(("static/", "tests/", "src/"))]


class TrafficThread(ServerThread):
    """The simulated upstream, a production proxy in front of it and traffic through it:
    a real /metrics for the installed dashboard to scrape."""

    metrics_url = ""

    async def _setup(self, nursery: trio.Nursery) -> None:
        self._stop = trio.Event()
        upstream = SimUpstream(
            UpstreamConfig(
                api_key=UPSTREAM_KEY, latency=0.005, stream_gap=0.002, cache_ratio=0.3, seed=7
            )
        )
        await nursery.start(upstream.serve)
        settings = ProxySettings.from_env(proxy_env(upstream))
        proxy = await nursery.start(serve_proxy, settings, self._stop)
        self.metrics_url = proxy.origin + "/metrics"
        for stream in (False, True):
            nursery.start_soon(post_forever, proxy.url, stream)

    def _teardown(self) -> None:
        self._stop.set()


@pytest.fixture
def traffic(tmp_path: Path) -> Iterator[TrafficThread]:
    thread = TrafficThread(tmp_path)
    thread.start()
    try:
        yield thread
    finally:
        thread.close()


def _venv_with(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv holding the wheel; its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(purelib) / "_test_run_deps.pth").write_text("\n".join(deps) + "\n")
    return Path(purelib)


class _Lines:
    """A process's output, line by line, read by a thread: wait for a line, keep them all."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.seen.append(line)
            self._queue.put(line)

    def wait_for(self, needle: str, timeout: float) -> str:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {needle!r} in:\n{''.join(self.seen)[-3000:]}") from None
            if needle in line:
                return line


# Every panel has drawn two points or more, with data; or some panel failed.
_DRAWN_OR_FAILED_JS = """(ids) => window.__dash && (
    Object.keys(window.__dash.errors).length > 0 || ids.every(id => {
        const p = window.__dash.panels[id];
        return p && p.points >= 2 && p.series.some(s => s.nonNull > 0);
    }))"""
_INKED_JS = """(id) => {
    const canvas = document.querySelector('#panel-' + id + ' canvas');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let inked = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) inked++;
    return inked;
}"""


def test_the_installed_wheel_serves_a_page_whose_six_charts_draw(
    built: Built, traffic: TrafficThread, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    assert not venv.is_relative_to(ROOT)
    site = _venv_with(built.wheel, venv)
    # Only the installed copy has this file: the server that answers it serves the wheel's.
    (site / "zai_proxy" / "static" / "from-the-wheel.txt").write_text("installed copy\n")
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "SCRAPE_TARGETS": traffic.metrics_url,
        "SCRAPE_INTERVAL": "250ms",
        "SCRAPE_TIMEOUT": "200ms",
        "DB_PATH": str(tmp_path / "dashboard.db"),
        "LISTEN_ADDR": "127.0.0.1:0",
    }
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c"]
        + ["import zai_proxy.dashboard as d; print(d.__file__); print(d.STATIC_DIR)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout.split()
    assert [Path(p).is_relative_to(site) for p in where] == [True, True], where

    dashboard = subprocess.Popen(
        [str(venv / "bin" / "zai-proxy"), "dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert dashboard.stdout is not None
        lines = _Lines(dashboard.stdout)
        url: str = json.loads(lines.wait_for('"dashboard listening"', timeout=20))["url"]
        assert httpx.get(url + "/static/from-the-wheel.txt").text == "installed copy\n"
        _check_page(url)
    finally:
        dashboard.terminate()
        try:
            dashboard.wait(timeout=15)
        except subprocess.TimeoutExpired:
            dashboard.kill()
            dashboard.wait()
    assert "Traceback" not in "".join(lines.seen), "".join(lines.seen)[-3000:]


def _check_page(url: str) -> None:
    executable = require_tool("chromium")
    console_errors: list[str] = []
    page_errors: list[str] = []
    failed: list[str] = []
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            page: Any = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(WAIT_MS)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else 0)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on(
                "response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else 0
            )
            page.goto(url + "/?variant=production&range=5m")
            page.wait_for_function(_DRAWN_OR_FAILED_JS, arg=list(PANELS))
            assert page.evaluate("() => window.__dash.errors") == {}
            for panel in PANELS:
                assert page.locator(f"#panel-{panel} canvas").count() == 1, panel
                assert page.locator(f"#panel-{panel} .panel-error").is_hidden(), panel
                assert page.evaluate(_INKED_JS, panel) > 0, panel
        finally:
            browser.close()
    assert (page_errors, console_errors, failed) == ([], [], [])
