"""The dashboard page in a real headless Chromium, against a live sim upstream, two
proxies (production and canary) and the dashboard service; and, for the pods and the
shared limiter, against two pods serving fixed /metrics text behind a dns+ target.

Playwright's sync API cannot run inside trio's loop, so the servers run in a background
thread under their own `trio.run` and the tests drive the browser from the plain pytest
thread; the few things a test does to the servers go through `trio.from_thread.run`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from playwright import sync_api as playwright_sync

from tests.conftest import UPSTREAM_KEY, proxy_env, require_tool
from tests.integration.test_dashboard_pods import FakePods, Resolver
from zai_proxy.dashboard import RunningDashboard, Snapshot, serve_dashboard
from zai_proxy.proxy import RunningProxy, serve_proxy
from zai_proxy.settings import DashboardSettings, ProxySettings
from zai_proxy.sim.upstream import Fault, SimUpstream, UpstreamConfig

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
PANELS = ("requests", "latency", "tokens", "concurrency", "limiter", "errors")
HOSTILE = "<img src=x onerror=window.__pwned=1>"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
WAIT_MS = 15_000


def message(stream: bool) -> dict[str, object]:
    return {
        "model": "glm-4.6",
        "max_tokens": 32,
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello to the dashboard."}],
    }


async def post_forever(url: str, stream: bool) -> None:
    """Traffic through a proxy until cancelled: a message every 20 ms, errors ignored."""
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            try:
                await client.post(url + "/v1/messages", json=message(stream))
            except httpx.HTTPError:
                pass
            await trio.sleep(0.02)


class ServerThread:
    """Servers under their own `trio.run` in a thread: `_setup` starts them in a nursery,
    `_teardown` begins their stop; `call` runs a coroutine function among them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.token: trio.lowlevel.TrioToken | None = None
        self.dashboard: RunningDashboard | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="e2e-servers", daemon=True)
        self._shutdown: trio.Event | None = None

    @property
    def url(self) -> str:
        assert self.dashboard is not None
        return self.dashboard.url

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(30) or self._failure is not None:
            raise RuntimeError("the servers did not start") from self._failure

    def close(self) -> None:
        if self.token is not None and self._shutdown is not None:
            trio.from_thread.run_sync(self._shutdown.set, trio_token=self.token)
        self._thread.join(15)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting test thread
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._shutdown = trio.Event()
        async with trio.open_nursery() as nursery:
            await self._setup(nursery)
            self._ready.set()
            await self._shutdown.wait()
            self._teardown()
            nursery.cancel_scope.cancel()

    async def _setup(self, nursery: trio.Nursery) -> None:
        raise NotImplementedError

    def _teardown(self) -> None:
        raise NotImplementedError


class Stack(ServerThread):
    """Upstream, two proxies, traffic and the dashboard."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self._nursery: trio.Nursery | None = None
        self._stop_dashboard: trio.Event | None = None
        self._dashboard_done: trio.Event | None = None
        self._settings: DashboardSettings | None = None

    async def _setup(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        upstream = SimUpstream(
            UpstreamConfig(
                api_key=UPSTREAM_KEY,
                latency=0.005,
                stream_gap=0.002,
                cache_ratio=0.3,
                fault_rate=0.15,
                fault_mix=(
                    (Fault.status(500), 1.0),
                    (Fault.status(529), 1.0),
                    (Fault.reset(), 1.0),
                ),
                seed=7,
            )
        )
        await nursery.start(upstream.serve)
        proxies: list[RunningProxy] = []
        for variant in ("production", "canary"):
            env = proxy_env(upstream, DEPLOYMENT_VARIANT=variant, RETRY_MAX="1")
            settings = ProxySettings.from_env(env)
            proxies.append(await nursery.start(serve_proxy, settings, trio.Event()))
        production, canary = proxies
        self._settings = DashboardSettings(
            scrape_targets=(
                production.origin + "/metrics",
                canary.origin + "/metrics?variant=canary",
            ),
            scrape_interval=0.25,
            scrape_timeout=0.2,
            listen_host="127.0.0.1",
            listen_port=0,
            db_path=str(self.tmp / "dashboard.db"),
        )
        await self._start_dashboard(0)
        for proxy in proxies:
            for stream in (False, True):
                nursery.start_soon(post_forever, proxy.url, stream)

    def _teardown(self) -> None:
        if self._stop_dashboard is not None:
            self._stop_dashboard.set()

    async def _start_dashboard(self, port: int) -> None:
        assert self._nursery is not None and self._settings is not None
        settings = dataclasses.replace(self._settings, listen_port=port)
        stop, done = trio.Event(), trio.Event()
        self._stop_dashboard, self._dashboard_done = stop, done
        self.dashboard = await self._nursery.start(_run_dashboard, settings, stop, done)

    async def stop_dashboard(self) -> None:
        assert self._stop_dashboard is not None and self._dashboard_done is not None
        self._stop_dashboard.set()
        with trio.fail_after(10):
            await self._dashboard_done.wait()

    async def restart_dashboard(self, port: int) -> None:
        with trio.fail_after(10):
            while True:
                try:
                    await self._start_dashboard(port)
                    return
                except OSError:
                    # The old socket may take a moment to let go of the port.
                    await trio.sleep(0.1)

    async def publish(self, snapshot: Snapshot) -> None:
        assert self.dashboard is not None
        self.dashboard.hub.publish(snapshot)
        await self.dashboard.store.insert(snapshot)


async def _run_dashboard(
    settings: DashboardSettings,
    stop: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[RunningDashboard] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await serve_dashboard(settings, stop, task_status=task_status)
    finally:
        done.set()


class PodsStack(ServerThread):
    """Two pods of production on a shared limiter (fixed /metrics text, since a real proxy
    needs a Redis for it) behind a dns+ target, and a dashboard scraping each pod."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.pods = FakePods()
        self.resolver = Resolver("127.0.0.1", "127.0.0.2")
        self._stop = trio.Event()

    async def _setup(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.pods.serve)
        settings = DashboardSettings(
            scrape_targets=(self.pods.target(),),
            scrape_interval=0.25,
            scrape_timeout=0.2,
            listen_host="127.0.0.1",
            listen_port=0,
            db_path=str(self.tmp / "dashboard.db"),
            dns_refresh_scrapes=1,
        )
        self.dashboard = await nursery.start(
            partial(serve_dashboard, settings, self._stop, resolve=self.resolver)
        )

    def _teardown(self) -> None:
        self._stop.set()

    async def resolve_to(self, *addresses: str) -> None:
        """The dns+ target's name resolves to `addresses` from the next scrape on."""
        self.resolver.addresses = list(addresses)
        await trio.lowlevel.checkpoint()

    async def redis_down_on(self, address: str, local_rate: float) -> None:
        """The pod at `address` loses Redis and runs a local bucket of `local_rate`."""
        pod = self.pods.pods[address]
        pod.up, pod.rate, pod.replicas, pod.judge = 0, local_rate, 1, 0
        await trio.lowlevel.checkpoint()


@dataclass
class Page:
    page: Any
    console_errors: list[str]
    page_errors: list[str]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("e2e"))
    stack.start()
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = require_tool("chromium")
    with playwright_sync.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def pods_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodsStack]:
    stack = PodsStack(tmp_path_factory.mktemp("e2e-pods"))
    stack.start()
    try:
        yield stack
    finally:
        stack.close()


def _page_opener(browser: Any, url: str, contexts: list[Any]) -> Callable[[str], Page]:
    def open_(query: str = "") -> Page:
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        result = Page(page=page, console_errors=[], page_errors=[])
        page.on(
            "console", lambda m: result.console_errors.append(m.text) if m.type == "error" else None
        )
        page.on("pageerror", lambda e: result.page_errors.append(str(e)))
        page.goto(url + "/" + query)
        return result

    return open_


@pytest.fixture
def open_page(browser: Any, stack: Stack) -> Iterator[Callable[[str], Page]]:
    contexts: list[Any] = []
    yield _page_opener(browser, stack.url, contexts)
    for context in contexts:
        context.close()


@pytest.fixture
def open_pods_page(browser: Any, pods_stack: PodsStack) -> Iterator[Callable[[str], Page]]:
    contexts: list[Any] = []
    yield _page_opener(browser, pods_stack.url, contexts)
    for context in contexts:
        context.close()


def wait_for_data(page: Any, points: int = 3) -> None:
    """Every panel has drawn at least `points` x values."""
    page.wait_for_function(
        """([ids, n]) => {
            const p = window.__dash && window.__dash.panels;
            return p && ids.every(id => p[id] && p[id].points >= n);
        }""",
        arg=[list(PANELS), points],
    )


def panel_state(page: Any, panel: str) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("(id) => window.__dash.panels[id]", panel)
    return state


def test_every_panel_draws_data(open_page: Callable[[str], Page]) -> None:
    p = open_page("?variant=production&range=5m")
    page = p.page
    page.wait_for_function(
        """(ids) => {
            const p = window.__dash.panels;
            return ids.every(id => p[id] && p[id].series.some(s => s.nonNull > 0));
        }""",
        arg=list(PANELS),
    )
    for panel in PANELS:
        assert page.locator(f"#panel-{panel} canvas").count() == 1, panel
        assert page.locator(f"#panel-{panel} .skeleton").is_hidden(), panel
        assert page.locator(f"#panel-{panel} .panel-error").is_hidden(), panel
    assert panel_state(page, "latency")["series"][0]["label"] == "p50"
    assert [s["label"] for s in panel_state(page, "tokens")["series"]] == [
        "input/s",
        "output/s",
        "cache_read/s",
        "cache_write/s",
    ]
    assert page.locator("#conn-state").get_attribute("data-state") == "connected"
    assert "scraped" in page.locator("#status-production").inner_text()


# Each panel's legend as shown: per row (time first) its label, its last / mean / max
# texts, and the values they should show: last is the row's point under the pointer, or
# with no pointer its latest point (uPlot.join marks a point only the other variant has as
# undefined, which is skipped); mean and max are over the drawn points.
_LEGENDS_JS = """(ids) => Object.fromEntries(ids.map(id => {
    const u = window.__dash.chart(id);
    const rows = Array.from(u.root.querySelectorAll('.u-legend tbody .u-series'));
    const idx = u.cursor.idx;
    const head = Array.from(u.root.querySelectorAll('.u-legend thead th'))
        .map(th => th.textContent);
    return [id, {hovered: idx ?? null, head, rows: rows.map((row, i) => {
        const s = i + 1;
        const ys = u.data[s];
        let at = null;
        if (idx === null || idx === undefined) {
            for (let i = ys.length - 1; i >= 0; i--) if (ys[i] !== undefined) { at = i; break; }
        } else {
            at = u.cursor.idxs[s] ?? idx;
        }
        const value = at === null ? null : ys[at];
        const present = ys.filter(y => y !== null && y !== undefined);
        return {
            label: row.querySelector('.u-label').textContent,
            texts: Array.from(row.querySelectorAll('.u-value')).map(c => c.textContent),
            values: [
                value === undefined ? null : value,
                present.length ? present.reduce((a, b) => a + b, 0) / present.length : null,
                present.length ? Math.max(...present) : null,
            ],
        };
    })}];
}))"""
STAMP = re.compile(r"\d{1,2}/\d{1,2}/\d{2} \d{1,2}:\d{2}:\d{2}[ap]m")
# A legend figure in its series' unit, as the axis would write it: "7.5 s", "12 req/s".
SHOWN = re.compile(r"(-?\d+(?:\.\d+)?)([kMGT]?)(?: ?(ms|s|%|req/s|tok/s|/s|req|workers))?")
SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
UNITS = {
    "requests": {"req/s"},
    "latency": {"ms", "s"},
    "tokens": {"tok/s"},
    "concurrency": {"req", "workers"},
    "limiter": {"req/s", "%"},
    "errors": {"%", "/s"},
}
BOTH = ("production", "canary")
# Series with a value at the latest scrape of a proxy serving traffic (latency and error %
# only once a request finished in the interval, which the test waits for).
ALWAYS_THERE = {
    "requests": ("req/s",),
    "latency": ("p50",),
    "tokens": ("input/s", "output/s"),
    "concurrency": ("concurrent", "max_workers"),
    "limiter": ("production allowed", "canary allowed (stacked)", "requests (both)"),
    "errors": ("error %",),
}


def legends(page: Any) -> dict[str, Any]:
    shown: dict[str, Any] = page.evaluate(_LEGENDS_JS, list(PANELS))
    return shown


def shown_value(panel: str, text: str) -> float:
    """The number a legend text stands for, in the series' base unit (ms for latency)."""
    match = SHOWN.fullmatch(text)
    assert match, (panel, text)
    number, prefix, unit = match.groups()
    assert unit in UNITS[panel], (panel, text)
    return float(number) * SCALE[prefix] * (1000.0 if unit == "s" else 1.0)


def assert_legend_shows_its_values(panel: str, legend: dict[str, Any]) -> None:
    # The header: the time of the "last" column (the pointer's, or the latest point's).
    assert STAMP.fullmatch(legend["head"][0]), (panel, legend["head"])
    assert legend["head"][1:] == ["last", "mean", "max"], (panel, legend["head"])
    for row in legend["rows"]:
        for text, value in zip(row["texts"], row["values"], strict=True):
            if value is None:
                assert text == "—", (panel, row)
            else:
                shown = shown_value(panel, text)
                assert shown == pytest.approx(value, rel=6e-3, abs=5.1e-3), (panel, row)


def test_legends_show_last_mean_and_max_in_their_unit_without_hovering(
    open_page: Callable[[str], Page],
) -> None:
    p = open_page("?variant=both&range=5m")
    page = p.page
    wait_for_data(page, points=5)
    # A scrape interval without a finished request has no latency: wait for one that has.
    # The limiter's headroom chart is one chart for both variants, its labels say which.
    wanted = [
        label if panel == "limiter" else f"{label} ({v})"
        for panel, labels in ALWAYS_THERE.items()
        for label in labels
        for v in BOTH
    ]
    try:
        shown = page.wait_for_function(
            f"""(wanted) => {{
                const shown = ({_LEGENDS_JS})({list(PANELS)!r});
                const texts = Object.fromEntries(Object.values(shown).flatMap(
                    legend => legend.rows.map(row => [row.label, row.texts[0]])));
                return wanted.every(label => /^-?\\d/.test(texts[label])) && shown;
            }}""",
            arg=wanted,
        ).json_value()
    except playwright_sync.TimeoutError:
        shown = legends(page)  # the assertions below show what the legends say
    texts = {row["label"]: row["texts"][0] for legend in shown.values() for row in legend["rows"]}
    assert {label: texts[label] for label in wanted if texts[label] == "—"} == {}
    for panel in PANELS:
        assert shown[panel]["hovered"] is None, panel
        assert_legend_shows_its_values(panel, shown[panel])

    # Under the pointer: that point's values; the pointer gone: the latest again.
    page.hover("#panel-requests .u-over")
    page.wait_for_function("() => window.__dash.chart('requests').cursor.idx != null")
    hovered = legends(page)["requests"]
    assert hovered["hovered"] is not None
    assert_legend_shows_its_values("requests", hovered)
    page.mouse.move(1, 1)
    page.wait_for_function("() => window.__dash.chart('requests').cursor.idx == null")
    after = legends(page)["requests"]
    assert_legend_shows_its_values("requests", after)
    assert after["rows"][0]["texts"][0].endswith(" req/s"), after
    assert p.page_errors == [] and p.console_errors == []


# Sets each panel's x scale to windows of every size (10 s to 7 d) and phase (across a
# minute, an hour and midnight), and lays out the time axis labels as uPlot draws them:
# centred on their tick, one row per line of the label (axis._splits and axis._values are
# uPlot 1.6's own; tests/unit/test_vendor.py pins the release).  Returns the overlaps, and
# the fewest ticks any window had.
_AXIS_OVERLAPS_JS = """(ids) => {
    const spans = [10, 20, 45, 90, 150, 200, 240, 270, 300, 450, 600, 900, 1800, 3600,
                   7200, 14400, 21600, 43200, 86400, 172800, 345600, 604800];
    const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
    const day = midnight.getTime() / 1000;
    const windows = [];
    for (const span of spans)
        for (const start of [day - span / 2, day - 3600 - 29, day + 3600 * 5 + 29,
                             day + 3600 * 7 - 1, day + 3600 * 9 + 31 - span / 3])
            windows.push([start, start + span]);
    const ctx = document.createElement('canvas').getContext('2d');
    const overlaps = [];
    let fewest = Infinity;
    for (const id of ids) {
        const u = window.__dash.chart(id);
        const axis = u.axes[0];
        ctx.font = axis.font[0];
        const ratio = axis.font[1] / axis.font[2];
        for (const [min, max] of windows) {
            u.batch(() => u.setScale('x', {min, max}));
            const values = axis._values || [];
            fewest = Math.min(fewest, values.filter(v => v != null).length);
            const rows = [];
            values.forEach((value, i) => {
                if (value == null) return;
                const x = u.valToPos(axis._splits[i], 'x');
                String(value).split('\\n').forEach((text, line) => {
                    if (!text) return;
                    const half = ctx.measureText(text).width / ratio / 2;
                    (rows[line] = rows[line] || []).push({left: x - half, right: x + half, text});
                });
            });
            rows.forEach(row => {
                row.sort((a, b) => a.left - b.left);
                for (let k = 1; k < row.length; k++) {
                    const [a, b] = [row[k - 1], row[k]];
                    if (b.left < a.right + 2)
                        overlaps.push(`${id}, ${max - min} s: "${a.text}" meets "${b.text}"`);
                }
            });
        }
    }
    return {overlaps, fewest};
}"""


def test_time_axis_labels_never_overlap(open_page: Callable[[str], Page]) -> None:
    p = open_page("?variant=both&range=5m")
    page = p.page
    wait_for_data(page)
    page.evaluate("() => window.__dash.state.source.close()")  # hold the charts still
    laid_out = page.evaluate(_AXIS_OVERLAPS_JS, list(PANELS))
    assert laid_out["overlaps"] == []
    assert laid_out["fewest"] >= 2
    assert p.page_errors == [] and p.console_errors == []


def test_token_strip_totals_equal_the_stored_window(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    page = open_page("?variant=production&range=5m").page
    page.wait_for_function(
        "() => Number(document.querySelector('#token-strip').dataset.count || 0) >= 5"
    )
    strip = page.evaluate("() => Object.assign({}, document.querySelector('#token-strip').dataset)")
    rows = httpx.get(
        stack.url + "/api/metrics", params={"range": "5m", "variant": "production"}
    ).json()
    first, last = float(strip["firstTs"]), float(strip["lastTs"])
    window = [r for r in rows if first <= r["ts"] <= last]
    assert len(window) == int(strip["count"])
    for key, attr in (
        ("in", "in"),
        ("out", "out"),
        ("cache_read", "cacheRead"),
        ("cache_write", "cacheWrite"),
    ):
        expected = sum(r[f"tokens_{key}"] or 0 for r in window)
        assert math.isclose(float(strip[attr]), expected, rel_tol=1e-9, abs_tol=1e-9), key
    assert float(strip["in"]) > 0 and float(strip["cacheRead"]) > 0
    assert page.locator("#token-strip").inner_text().startswith("5m window: ")


def test_variant_and_range_controls_change_the_charts_and_url(
    open_page: Callable[[str], Page],
) -> None:
    page = open_page("").page
    wait_for_data(page)
    assert "variant=production" in page.url and "range=5m" in page.url

    page.click("#variant-canary")
    assert "variant=canary" in page.url
    assert page.get_attribute("#variant-canary", "aria-pressed") == "true"
    series = panel_state(page, "requests")["series"]
    assert [s["variant"] for s in series] == ["canary"] and series[0]["nonNull"] > 0

    page.click("#variant-both")
    assert "variant=both" in page.url
    labels = [s["label"] for s in panel_state(page, "requests")["series"]]
    assert labels == ["req/s (production)", "req/s (canary)"]
    assert len(panel_state(page, "latency")["series"]) == 6

    backfills = page.evaluate("() => window.__dash.backfills")
    page.select_option("#range-select", "15m")
    assert "range=15m" in page.url
    page.wait_for_function("(n) => window.__dash.backfills > n", arg=backfills)
    assert page.locator("#token-strip").inner_text().startswith("15m window: ")

    # The shared URL opens the same view.
    shared = open_page("?" + page.url.split("?", 1)[1]).page
    assert shared.get_attribute("#variant-both", "aria-pressed") == "true"
    assert shared.locator("#range-select").input_value() == "15m"


def test_a_failing_panel_does_not_take_the_others_down(browser: Any, stack: Stack) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        # Wrap uPlot as the page loads it, so only the latency chart fails to build.
        page.add_init_script(
            """(() => {
                let real;
                Object.defineProperty(window, "uPlot", {
                    configurable: true,
                    get() { return real && wrapped; },
                    set(v) { real = v; },
                });
                function wrapped(opts, data, el) {
                    if (opts.series.some(s => s.label === "p50")) throw new Error("boom");
                    return new real(opts, data, el);
                }
                wrapped.join = (...args) => real.join(...args);
            })()"""
        )
        page.goto(stack.url + "/?variant=production")
        page.wait_for_selector("#panel-latency .panel-error:visible")
        assert "boom" in page.locator("#panel-latency .panel-error").inner_text()
        page.wait_for_function("() => window.__dash.panels.requests?.points > 0")
        for panel in PANELS:
            if panel != "latency":
                assert page.locator(f"#panel-{panel} canvas").count() == 1, panel
                assert page.locator(f"#panel-{panel} .panel-error").is_hidden(), panel
    finally:
        context.close()


def test_theme_persists_across_reload(open_page: Callable[[str], Page], stack: Stack) -> None:
    page = open_page("?theme=light").page
    assert page.get_attribute("html", "data-theme") == "light"
    page.click("#theme-toggle")
    assert page.get_attribute("html", "data-theme") == "dark"
    assert "theme=dark" in page.url
    page.goto(stack.url + "/")
    assert page.get_attribute("html", "data-theme") == "dark"
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.tagName") == "BUTTON"


def test_page_reconnects_after_the_dashboard_restarts(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    p = open_page("?variant=production")
    page = p.page
    wait_for_data(page)
    port = stack.dashboard.port if stack.dashboard else 0
    backfills = page.evaluate("() => window.__dash.backfills")

    stack.call(stack.stop_dashboard)
    try:
        page.wait_for_function(
            "() => document.querySelector('#countdown').textContent.startsWith('Reconnecting in ')"
        )
        # Between attempts and during them alike: the state, the box and its button stay.
        assert page.locator("#conn-state").get_attribute("data-state") == "reconnecting"
        assert page.locator("#reconnect-now").is_visible()
        # No new data for three scrape intervals: the variant is marked stale.
        page.wait_for_selector("#stale-production:visible")
        assert page.locator("#conn-state").get_attribute("data-state") == "reconnecting"
        assert page.locator("#reconnect-now").is_visible()
    finally:
        # The other tests share this dashboard: bring it back whatever happened above.
        stack.call(stack.restart_dashboard, port)
    page.wait_for_selector("#conn-state[data-state=connected]")
    page.wait_for_function("(n) => window.__dash.backfills > n", arg=backfills)
    assert page.locator("#reconnect").is_hidden()
    page.wait_for_selector("#stale-production", state="hidden")
    assert p.page_errors == []
    # Failed reconnect attempts are logged by Chromium itself; nothing else may be.
    assert [e for e in p.console_errors if "ERR_CONNECTION_REFUSED" not in e] == []


def test_no_console_errors(open_page: Callable[[str], Page]) -> None:
    p = open_page("?variant=both&range=1h")
    page = p.page
    wait_for_data(page)
    page.select_option("#range-select", "5m")
    page.click("#variant-production")
    page.click("#theme-toggle")
    wait_for_data(page)
    page.set_viewport_size({"width": 700, "height": 1000})
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__dash.errors") == {}
    assert p.page_errors == []
    assert p.console_errors == []


_POD_ROWS_JS = """(v) => Array.from(document.querySelectorAll('#pods-' + v + ' tr.pod'))
    .map(r => Object.assign({cells: Array.from(r.cells).map(c => c.textContent)}, r.dataset))"""


def pod_rows(page: Any, variant: str) -> dict[str, dict[str, Any]]:
    """The rows of the variant's pods table by pod URL: data attributes and `cells`."""
    rows: list[dict[str, Any]] = page.evaluate(_POD_ROWS_JS, variant)
    return {row["url"]: row for row in rows}


def wait_for_pods(page: Any, variant: str, cells: dict[str, list[str]]) -> dict[str, Any]:
    """Wait until the variant's pods table shows exactly `cells` (by pod URL); its rows.

    A real proxy can miss a 0.2 s scrape deadline on a busy machine, and the table shows
    that pod down until the next scrape: the test waits for the state it means."""
    try:
        page.wait_for_function(
            f"""([v, want]) => {{
                const rows = ({_POD_ROWS_JS})(v);
                return rows.length === Object.keys(want).length && rows.every(
                    r => JSON.stringify(r.cells) === JSON.stringify(want[r.url]));
            }}""",
            arg=[variant, cells],
        )
    except playwright_sync.TimeoutError:
        pass  # the assertion below shows the difference
    rows = pod_rows(page, variant)
    assert {url: row["cells"] for url, row in rows.items()} == cells
    return rows


def wait_for_text(page: Any, selector: str, text: str) -> None:
    try:
        page.wait_for_function(
            "([sel, text]) => document.querySelector(sel)?.textContent === text",
            arg=[selector, text],
        )
    except playwright_sync.TimeoutError:
        pass  # the assertion below shows the difference
    assert page.locator(selector).inner_text() == text


def test_proxies_on_memory_show_a_limiter_per_pod(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    page = open_page("?variant=both&range=5m").page
    targets = httpx.get(stack.url + "/api/status").json()["targets"]
    for variant in ("production", "canary"):
        [url] = [t["url"] for t in targets if t["variant"] == variant]
        host = urlsplit(url).netloc
        # The proxy's limiter runs at RATE_LIMIT_INITIAL=10000 (see proxy_env).
        rows = wait_for_pods(page, variant, {url: [host, "up", "memory up", "", "10k"]})
        assert (rows[url]["backend"], rows[url]["backendUp"], rows[url]["judge"]) == (
            "memory",
            "true",
            "false",
        )
        wait_for_text(
            page,
            f"#limiter-line-{variant}",
            f"{variant}: per pod (memory), 1 pod · rate 10k req/s, ceiling —",
        )


def test_pods_on_a_shared_limiter_show_it_once_and_flag_a_pod_without_redis_or_down(
    open_pods_page: Callable[[str], Page], pods_stack: PodsStack
) -> None:
    p = open_pods_page("?variant=production&range=5m")
    page = p.page
    fake = pods_stack.pods
    first, second = fake.pod_url("127.0.0.1"), fake.pod_url("127.0.0.2")
    rows = wait_for_pods(
        page,
        "production",
        {
            first: [f"127.0.0.1:{fake.port}", "up", "redis up", "judge", "7.5"],
            second: [f"127.0.0.2:{fake.port}", "up", "redis up", "", "7.5"],
        },
    )
    assert [rows[u]["judge"] for u in (first, second)] == ["true", "false"]
    wait_for_text(
        page,
        "#limiter-line-production",
        "production: shared (redis), 2 replicas · rate 7.5 req/s, ceiling 9",
    )
    assert page.locator("#pods-production tr.bad, #limiter-line-production.bad").count() == 0

    pods_stack.call(pods_stack.redis_down_on, "127.0.0.2", 2.0)
    rows = wait_for_pods(
        page,
        "production",
        {
            first: [f"127.0.0.1:{fake.port}", "up", "redis up", "judge", "7.5"],
            second: [f"127.0.0.2:{fake.port}", "up", "redis down (local bucket)", "", "2"],
        },
    )
    assert rows[second]["backendUp"] == "false"
    assert page.locator("#pods-production tr.bad").count() == 1
    wait_for_text(
        page,
        "#limiter-line-production",
        "production: shared (redis), 2 replicas; redis down on 1 of 2 pods (local bucket)"
        " · rate 9.5 req/s, ceiling 18",
    )
    assert page.locator("#limiter-line-production.bad").count() == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#panel-limiter").screenshot(path=str(SCREENSHOTS / "limiter-pods.png"))

    # A target down: the status bar says how many are up, in the warning colour.
    wait_for_text(page, "#scrape-health", "2 of 2 targets up")
    # The name now resolves to a pod that is gone: nothing listens on 127.0.0.3.
    pods_stack.call(pods_stack.resolve_to, "127.0.0.1", "127.0.0.3")
    try:
        wait_for_text(page, "#scrape-health", "1 of 2 targets up")
        health = page.locator("#scrape-health")
        assert health.get_attribute("data-state") == "warn"
        colours = page.evaluate(
            """() => { const probe = document.createElement('span');
                document.body.appendChild(probe); probe.style.color = 'var(--warn)';
                const warn = getComputedStyle(probe).color; probe.remove();
                return [getComputedStyle(document.querySelector('#scrape-health')).color, warn];
            }"""
        )
        assert colours[0] == colours[1], colours
        scraped = page.locator("#status-production .scrape")
        assert scraped.inner_text() == "1/2 scraped"
        assert "warn" in (scraped.get_attribute("class") or "")
        down = f"http://127.0.0.3:{pods_stack.pods.port}/metrics"
        rows = pod_rows(page, "production")
        assert rows[down]["cells"][:2] == [f"127.0.0.3:{pods_stack.pods.port}", "down"], rows
    finally:
        pods_stack.call(pods_stack.resolve_to, "127.0.0.1", "127.0.0.2")
    wait_for_text(page, "#scrape-health", "2 of 2 targets up")
    assert page.locator("#scrape-health").get_attribute("data-state") == "ok"
    assert page.evaluate("() => window.__dash.errors") == {}
    assert p.page_errors == [] and p.console_errors == []


# ---------------------------------------------------------------- honest time (issue 18)

_X_SCALE_JS = """(id) => { const u = window.__dash.chart(id);
    return {min: u.scales.x.min, max: u.scales.x.max, now: Date.now() / 1000}; }"""


def test_the_time_axis_runs_over_the_whole_range_up_to_now(
    open_page: Callable[[str], Page],
) -> None:
    p = open_page("?variant=production&range=1h")
    page = p.page
    wait_for_data(page)
    for panel in PANELS:
        x = page.evaluate(_X_SCALE_JS, panel)
        assert x["max"] == pytest.approx(x["now"], abs=1.5), panel
        assert x["min"] == pytest.approx(x["now"] - 3600, abs=1.5), panel
    # The stack has run for minutes, not an hour: the page says since when it has data.
    first = page.evaluate("() => window.__dash.state.data.production[0].ts")
    note = page.locator("#range-note")
    assert note.inner_text().startswith("data since ")
    assert float(note.get_attribute("data-since") or 0) == pytest.approx(first, abs=1)
    assert p.page_errors == [] and p.console_errors == []


_DRAG_JS = """(id) => { const r = window.__dash.chart(id).over.getBoundingClientRect();
    return {x: r.left, y: r.top + r.height / 2, w: r.width}; }"""


def test_a_zoom_pauses_live_updates_until_back_to_live_and_the_crosshair_is_shared(
    open_page: Callable[[str], Page],
) -> None:
    p = open_page("?variant=production&range=5m")
    page = p.page
    wait_for_data(page, points=5)
    # One pointer, one crosshair on every chart.
    box = page.evaluate(_DRAG_JS, "requests")
    page.mouse.move(box["x"] + box["w"] * 0.9, box["y"])
    page.wait_for_function("() => window.__dash.chart('latency').cursor.left > 0")
    synced = page.evaluate(
        "() => ['requests', 'latency'].map(id => window.__dash.chart(id).cursor.idx)"
    )
    assert synced[0] is not None and synced[0] == synced[1]

    page.mouse.down()
    page.mouse.move(box["x"] + box["w"] * 0.95, box["y"], steps=4)
    page.mouse.up()
    page.wait_for_selector("#live-state:visible")
    zoomed = {panel: page.evaluate(_X_SCALE_JS, panel) for panel in ("requests", "latency")}
    assert zoomed["requests"]["max"] - zoomed["requests"]["min"] < 60
    assert zoomed["latency"]["min"] == zoomed["requests"]["min"]
    # Live snapshots keep coming (4 scrapes, 1 s); the zoom stays where it was.
    count = page.evaluate("() => window.__dash.state.data.production.length")
    page.wait_for_function("(n) => window.__dash.state.data.production.length >= n + 4", arg=count)
    page.wait_for_timeout(1100)  # and the once-a-second "follow now" tick has run
    for panel, before in zoomed.items():
        after = page.evaluate(_X_SCALE_JS, panel)
        assert (after["min"], after["max"]) == (before["min"], before["max"]), panel

    page.click("#back-to-live")
    assert page.locator("#live-state").is_hidden()
    x = page.evaluate(_X_SCALE_JS, "requests")
    assert x["max"] == pytest.approx(x["now"], abs=1.5)
    assert x["max"] - x["min"] == pytest.approx(300, abs=0.01)
    assert p.page_errors == [] and p.console_errors == []


# Per series of the requests chart: the gaps uPlot left in its path (canvas pixel ranges)
# and where each null of the data falls (canvas pixels too).
_GAPS_JS = """([from, to]) => { const u = window.__dash.chart('requests');
    const last = u.data[0].length - 1;
    return u.series.slice(1).map((s, i) => ({
        // The path uPlot draws for the series, built now, against the same scale.
        gaps: s.paths(u, i + 1, 0, last).gaps || [],
        // The nulls inside the outage, in the same canvas pixels.
        nulls: u.data[i + 1].flatMap((y, k) => {
            const x = u.data[0][k];
            return y === null && x > from && x < to ? [u.valToPos(x, 'x', true)] : [];
        }),
    })); }"""


# The share of canvas pixels down a column of the plot that hold the outage band's colour
# (as the canvas stores it), in the middle of an outage and 2 s before it; and the bands
# the chart drew.
_SHADED_JS = """([id, from, to]) => { const u = window.__dash.chart(id);
    const probe = document.createElement('canvas').getContext('2d');
    probe.fillStyle = u.__colors.outage; probe.fillRect(0, 0, 1, 1);
    const band = probe.getImageData(0, 0, 1, 1).data;
    const top = Math.ceil(u.bbox.top), height = Math.floor(u.bbox.height);
    const shaded = ts => {
        const x = Math.round(u.valToPos(ts, 'x', true));
        const px = u.ctx.getImageData(x, top, 1, height).data;
        let n = 0;
        for (let k = 0; k < px.length; k += 4)
            if ([0, 1, 2, 3].every(c => Math.abs(px[k + c] - band[c]) <= 2)) n++;
        return n / height;
    };
    return {inside: shaded((from + to) / 2), outside: shaded(from - 2),
            drawn: u.__drawn.outages}; }"""


def test_an_outage_is_drawn_as_a_gap(open_page: Callable[[str], Page], stack: Stack) -> None:
    p = open_page("?variant=production&range=5m")
    page = p.page
    wait_for_data(page)
    port = stack.dashboard.port if stack.dashboard else 0
    stack.call(stack.stop_dashboard)
    try:
        # Two seconds without scrapes: eight missed 0.25 s intervals.
        page.wait_for_timeout(2000)
    finally:
        stack.call(stack.restart_dashboard, port)
    page.wait_for_selector("#conn-state[data-state=connected]")
    page.wait_for_function("() => (window.__dash.panels.requests.gaps || []).length > 0")
    gaps = page.evaluate("() => window.__dash.panels.requests.gaps")
    gap = max(gaps, key=lambda g: g["to"] - g["from"])
    assert gap["to"] - gap["from"] > 1.5
    [series] = page.evaluate(_GAPS_JS, [gap["from"], gap["to"]])
    assert series["nulls"], "no null in the data at the outage"
    # The line stops at the outage: every null lies inside a gap of the drawn path.
    for x in series["nulls"]:
        assert any(left <= x <= right for left, right in series["gaps"]), (x, series["gaps"])

    # No row from either variant: an outage, shaded on every chart (it begins at the
    # last row of either variant, up to a scrape after production's last).
    outages = page.evaluate("() => window.__dash.state.outages")
    [outage] = [o for o in outages if o[0] < gap["from"] + 0.5 and o[1] > gap["to"] - 0.5]
    page.evaluate(
        "([a, b]) => window.__dash.chart('requests').setScale('x', {min: a, max: b})",
        [outage[0] - 4, outage[1] + 4],
    )
    for panel in PANELS:
        shaded = page.evaluate(_SHADED_JS, [panel, *outage])
        assert outage in shaded["drawn"], (panel, shaded)
        # Canvas pixels down the band's middle have its colour (but where a grid line
        # crosses); beside it, before the outage, none has.
        assert shaded["inside"] > 0.9 and shaded["outside"] < 0.3, (panel, shaded)
    page.click("#back-to-live")
    assert p.page_errors == []


# ---------------------------------------------------------------- variants (issue 18)


def _hue(colour: str) -> float:
    """The hue (degrees) of a CSS rgb()/#hex colour."""
    if colour.startswith("#"):
        r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    else:
        r, g, b = (int(v) / 255 for v in re.findall(r"\d+", colour)[:3])
    hi, lo = max(r, g, b), min(r, g, b)
    if hi == lo:
        return 0.0
    if hi == r:
        h = (g - b) / (hi - lo) % 6
    elif hi == g:
        h = (b - r) / (hi - lo) + 2
    else:
        h = (r - g) / (hi - lo) + 4
    return 60 * h


def _hue_apart(a: float, b: float) -> float:
    return min(abs(a - b), 360 - abs(a - b))


_STROKES_JS = """(id) => { const u = window.__dash.chart(id);
    const markers = Array.from(u.root.querySelectorAll('.u-legend tbody .u-series .u-marker'));
    return u.series.slice(1).map((s, i) => ({
        label: s.label,
        stroke: typeof s.stroke === 'function' ? s.stroke(u, i + 1) : s.stroke,
        marker: getComputedStyle(markers[i]).borderColor,
    })); }"""


def assert_variants_have_their_own_colour_family(page: Any) -> None:
    for panel in ("requests", "latency", "concurrency"):
        series = page.evaluate(_STROKES_JS, panel)
        strokes = [s["stroke"] for s in series]
        assert len(set(strokes)) == len(strokes), (panel, strokes)
        assert len({s["marker"] for s in series}) == len(series), (panel, series)
        production = [_hue(s["stroke"]) for s in series if "(production)" in s["label"]]
        canary = [_hue(s["stroke"]) for s in series if "(canary)" in s["label"]]
        # Every canary line is at least 60 degrees of hue from every production line.
        assert min(_hue_apart(a, b) for a in production for b in canary) >= 60, (panel, series)


def test_a_series_switched_off_in_the_legend_stays_off_in_the_shared_url(
    open_page: Callable[[str], Page],
) -> None:
    page = open_page("?variant=both&range=5m").page
    wait_for_data(page)
    page.locator("#panel-requests .u-legend .u-series", has_text="req/s (canary)").locator(
        ".u-label"
    ).click()
    page.wait_for_function("() => new URLSearchParams(location.search).has('hide')")
    assert "requests:req/s (canary)" in page.evaluate(
        "() => new URLSearchParams(location.search).get('hide')"
    )
    shared = open_page("?" + page.url.split("?", 1)[1]).page
    wait_for_data(shared)
    shown = shared.evaluate(
        "() => window.__dash.chart('requests').series.slice(1).map(s => [s.label, s.show])"
    )
    assert shown == [["req/s (production)", True], ["req/s (canary)", False]]


# ---------------------------------------------------------------- failures (issue 18)


async def _failing_history(stack: Stack, failing: bool) -> None:
    """Make the dashboard's /api/metrics answer 500 (its store raises), or stop that."""
    assert stack.dashboard is not None
    store = stack.dashboard.store
    if failing:

        async def broken(*args: object) -> bytes:
            raise RuntimeError("the store is unreadable")

        store.query_json = broken  # type: ignore[method-assign]
    else:
        del store.query_json  # the class's own method again
    await trio.lowlevel.checkpoint()


def test_a_failed_history_request_shows_the_error_and_a_retry_that_recovers(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    stack.call(_failing_history, stack, True)
    try:
        assert httpx.get(stack.url + "/api/metrics").status_code == 500
        p = open_page("?variant=production&range=5m")
        page = p.page
        page.wait_for_selector("#panel-latency .panel-error .retry:visible")
        for panel in PANELS:
            error = page.locator(f"#panel-{panel} .panel-error")
            assert "HTTP 500" in error.inner_text(), panel
            assert page.locator(f"#panel-{panel} .skeleton").is_hidden(), panel
    finally:
        stack.call(_failing_history, stack, False)
    page.click("#panel-latency .panel-error .retry")
    wait_for_data(page)
    for panel in PANELS:
        assert page.locator(f"#panel-{panel} .panel-error").is_hidden(), panel
    assert page.evaluate("() => window.__dash.errors") == {}
    assert p.page_errors == []


def test_an_empty_store_says_so(open_pods_page: Callable[[str], Page]) -> None:
    # The pods stack runs production only: nothing was ever stored for canary.
    page = open_pods_page("?variant=canary&range=5m").page
    page.wait_for_selector("#panel-requests .panel-note:visible")
    # (The limiter's headroom chart shows both variants: production's limiter is there.)
    for panel in (p for p in PANELS if p != "limiter"):
        note = page.locator(f"#panel-{panel} .panel-note")
        assert note.inner_text().startswith("No data stored for canary in the last 5m"), panel
        assert page.locator(f"#panel-{panel} .skeleton").is_hidden(), panel
    assert page.locator("#range-note").inner_text() == "no data in the last 5m"


def test_the_status_bar_shows_the_proxies_scrape_health(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    page = open_page("?variant=both&range=5m").page
    page.wait_for_selector("#scrape-health:not([data-state=unknown])")
    # A real proxy can miss a 0.2 s scrape deadline: wait for what /api/status says.
    page.wait_for_function(
        """async () => {
            const targets = (await (await fetch('/api/status')).json()).targets;
            const up = targets.filter(t => t.up).length;
            const el = document.querySelector('#scrape-health');
            return el.dataset.up === String(up) && el.dataset.total === String(targets.length)
                && el.textContent === `${up} of ${targets.length} targets up`;
        }"""
    )
    assert page.locator("#scrape-health").get_attribute("data-total") == "2"


# ---------------------------------------------------------------- verdict strip (issue 18)

_FIGURE = re.compile(r"(-?\d+(?:\.\d+)?)([kM]?)( ?(?:ms|s|%))? (1m|5m)")


def test_the_verdict_strip_colours_figures_by_the_alert_rules(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    thresholds = httpx.get(stack.url + "/api/config").json()["thresholds"]
    page = open_page("?variant=both&range=5m").page
    wait_for_data(page)
    page.wait_for_selector(
        "#verdict-canary .tile[data-metric=errors][data-level]:not([data-level=''])"
    )
    tiles = page.evaluate(
        """() => Array.from(document.querySelectorAll('.verdict-variant')).map(row => ({
            variant: row.dataset.variant,
            tiles: Array.from(row.querySelectorAll('.tile')).map(t => ({
                metric: t.dataset.metric, level: t.dataset.level,
                figs: Array.from(t.querySelectorAll('.fig')).map(f =>
                    ({text: f.textContent, window: f.dataset.window, level: f.dataset.level})),
            })),
        }))"""
    )
    # The page's colouring against the rules' thresholds, either side of each one (the
    # live figures below may all fall on one side).
    levels = page.evaluate(
        """(t) => [[1, 3, 6].map(v => window.__dash.level(v, t.error_pct)),
                   [9000, 11000].map(v => window.__dash.level(v, t.p95_ms)),
                   [0.5, 0.95, 1].map(v => window.__dash.level(v, t.utilization))]""",
        thresholds,
    )
    assert levels == [["ok", "warn", "bad"], ["ok", "bad"], ["ok", "warn", "bad"]]
    assert [row["variant"] for row in tiles] == ["production", "canary"]
    for row in tiles:
        assert [t["metric"] for t in row["tiles"]] == ["req", "errors", "p95", "tokens", "workers"]
        for tile in row["tiles"]:
            assert [f["window"] for f in tile["figs"]] == ["1m", "5m"]
            if tile["metric"] == "workers":
                continue
            for fig in tile["figs"]:
                match = _FIGURE.fullmatch(fig["text"])
                assert match, fig
                value = float(match[1]) * {"": 1, "k": 1e3, "M": 1e6}[match[2]]
                if tile["metric"] == "errors":
                    limits = thresholds["error_pct"]
                    want = (
                        "bad"
                        if value >= limits["bad"]
                        else "warn"
                        if value > limits["warn"]
                        else "ok"
                    )
                    assert fig["level"] == want, fig
                if tile["metric"] == "p95":
                    value *= 1000 if (match[3] or "").strip() == "s" else 1
                    want = "bad" if value >= thresholds["p95_ms"]["bad"] else "ok"
                    assert fig["level"] == want, fig
            assert tile["level"] == tile["figs"][1]["level"], tile
    compare = page.locator("#compare").inner_text()
    assert re.fullmatch(
        r"Canary vs production: p95 [+−]\d+(\.\d+)? %, errors (\d+(\.\d+)?×|[\d.]+% vs [\d.]+%),"
        r" last \d+ min( \(worse than the canary alert rules allow\))?",
        compare,
    ), compare


# ---------------------------------------------------------------- tokens (issue 18)


def test_tokens_by_variant_and_model_with_the_cache_hit_ratio(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    page = open_page("?variant=both&range=5m").page
    wait_for_data(page, points=5)
    page.wait_for_function(
        "() => (window.__dash.tokenModels || []).filter(r => r.rate > 0).length === 2"
    )
    shown = page.evaluate("() => window.__dash.tokenModels")
    assert [(r["variant"], r["model"]) for r in shown] == [
        ("production", "glm-4.6"),
        ("canary", "glm-4.6"),
    ]
    rows = httpx.get(stack.url + "/api/metrics", params={"range": "5m"}).json()
    for r in shown:
        mine = [x for x in rows if x["variant"] == r["variant"] and not x["stale"]]
        cached = sum(x["tokens_cache_read"] or 0 for x in mine)
        seen = sum(
            (x["tokens_in"] or 0) + (x["tokens_cache_read"] or 0) + (x["tokens_cache_write"] or 0)
            for x in mine
        )
        # The sim upstream serves 30 % of input from its cache (cache_ratio=0.3).
        assert r["cacheHitPct"] == pytest.approx(100 * cached / seen, abs=3), r
        assert 0 < r["cacheHitPct"] < 100
    text = page.locator("#token-models").inner_text()
    assert "glm-4.6" in text and "tok/s" in text and "cache hits" in text


# ---------------------------------------------------------------- readable everywhere (issue 18)

# WCAG 2 contrast from the page's computed colours: text against what it is drawn on
# (4.5:1), chart lines against the panel (3:1).  A CSS variable is read through a probe
# element, so the figure is the one the browser paints.
_CONTRAST_JS = """() => {
    const rgb = c => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
    const lum = c => {
        const [r, g, b] = rgb(c).map(v => { v /= 255;
            return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
                              return (x + 0.05) / (y + 0.05); };
    const probe = document.createElement('span');
    document.body.appendChild(probe);
    const color = v => { probe.style.color = `var(${v})`; return getComputedStyle(probe).color; };
    const css = (sel, prop) => getComputedStyle(document.querySelector(sel))[prop];
    const bg = color('--bg'), panel = color('--panel');
    const text = [
        ['text on bg', color('--text'), bg], ['text on panel', color('--text'), panel],
        ['muted on bg', color('--muted'), bg], ['muted on panel', color('--muted'), panel],
        ['selected toggle', css('#variant-toggle [aria-pressed=true]', 'color'),
                            css('#variant-toggle [aria-pressed=true]', 'backgroundColor')],
        ['legend', css('.u-legend', 'color'), panel],
        ['stale marker', css('.stale-marker', 'color'), css('.stale-marker', 'backgroundColor')],
    ];
    for (const level of ['--ok', '--warn', '--bad'])
        text.push([level + ' on bg', color(level), bg], [level + ' on panel', color(level), panel]);
    const lines = [];
    for (const id of ['requests', 'latency', 'tokens', 'concurrency', 'limiter', 'errors']) {
        const u = window.__dash.chart(id);
        u.series.slice(1).forEach((s, i) => {
            const stroke = typeof s.stroke === 'function' ? s.stroke(u, i + 1) : s.stroke;
            probe.style.color = stroke;
            lines.push([id + ' ' + s.label, getComputedStyle(probe).color, panel]);
        });
    }
    probe.remove();
    const judged = list => list.map(([name, a, b]) => [name, Math.round(ratio(a, b) * 100) / 100]);
    return {text: judged(text), lines: judged(lines)};
}"""


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_variants_have_their_own_colour_family_and_palettes_meet_wcag_aa_contrast(
    open_page: Callable[[str], Page], theme: str
) -> None:
    page = open_page(f"?variant=both&range=5m&theme={theme}").page
    wait_for_data(page)
    assert_variants_have_their_own_colour_family(page)
    judged = page.evaluate(_CONTRAST_JS)
    assert len(judged["lines"]) >= 20
    assert [t for t in judged["text"] if t[1] < 4.5] == []
    assert [line for line in judged["lines"] if line[1] < 3.0] == []


_HEIGHTS_JS = """(ids) => ids.map(id => {
    const u = window.__dash.chart(id);
    return [id, u.root.querySelector('.u-legend').getBoundingClientRect().height,
            u.root.querySelector('.u-over').getBoundingClientRect().height];
})"""


def test_phone_layout_is_compact_and_no_legend_is_taller_than_its_chart(
    browser: Any, stack: Stack
) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, device_scale_factor=2
    )
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(stack.url + "/?variant=both&range=5m")
        wait_for_data(page)
        for panel, legend, chart in page.evaluate(_HEIGHTS_JS, list(PANELS)):
            assert 0 < legend <= chart, (panel, legend, chart)
        # Nothing wider than the phone: no sideways scrolling.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        # Both variants in six panels, at most about three phone screens long (it was
        # 3,500 px): lower charts, short scrolling legends, the pods table folded.
        height = page.evaluate("() => document.documentElement.scrollHeight")
        assert height <= 2400, height
        assert page.evaluate("() => document.querySelector('#limiter-details').open") is False
        page.click("#limiter-details summary")
        page.wait_for_selector("#pods-canary:visible")
    finally:
        context.close()


# Late in the module, so the charts have history, and before the tests that publish
# made-up snapshots (limiter adjustments, hostile strings), so the pictures show the
# stack's own traffic.
SCREEN_SIZES = {"desktop": {"width": 1400, "height": 1100}, "phone": {"width": 390, "height": 844}}


@pytest.mark.parametrize("size", list(SCREEN_SIZES))
def test_screenshot_set(browser: Any, stack: Stack, size: str) -> None:
    """dashboard-<size>-<theme>-<variant>.png for each theme and variant mode, in
    test-artifacts/screenshots; docs/dashboard.png is desktop-light-both."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=SCREEN_SIZES[size])
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{stack.url}/?variant=production&range=5m&theme=light")
        wait_for_data(page, points=10)
        for theme in ("light", "dark"):
            if page.get_attribute("html", "data-theme") != theme:
                page.click("#theme-toggle")
            for variant in ("production", "canary", "both"):
                page.click(f"#variant-{variant}")
                page.wait_for_function(
                    "(n) => window.__dash.chart('requests')?.series.length === n + 1",
                    arg=2 if variant == "both" else 1,
                )
                page.wait_for_selector("#verdict-variants .tile")
                # A 0.2 s scrape deadline is missed now and then on a busy machine: the
                # pictures show the steady state, every target up.
                page.wait_for_selector("#scrape-health[data-state=ok]")
                path = SCREENSHOTS / f"dashboard-{size}-{theme}-{variant}.png"
                page.screenshot(path=str(path), full_page=True)
                assert path.stat().st_size > 10_000, path
    finally:
        context.close()


# ---------------------------------------------------------------- limiter headroom (issue 18)


# The canvas pixel just under the top of an adjustment's ▼ (the triangle is 10 px wide
# there), and the decrease colour as the canvas holds it.
_MARKER_PIXEL_JS = """([id, ts]) => { const u = window.__dash.chart(id);
    const x = Math.round(u.valToPos(ts, 'x', true)) + 2 * uPlot.pxRatio;
    const y = Math.round(u.bbox.top + 2 * uPlot.pxRatio);
    const c = document.createElement('canvas').getContext('2d');
    c.fillStyle = u.__colors.decrease; c.fillRect(0, 0, 1, 1);
    return {pixel: Array.from(u.ctx.getImageData(x, y, 1, 1).data),
            color: Array.from(c.getImageData(0, 0, 1, 1).data)}; }"""


def test_limiter_headroom_stacks_the_variants_keeps_the_ceiling_and_marks_adjustments(
    open_page: Callable[[str], Page], stack: Stack
) -> None:
    p = open_page("?variant=production&range=5m")
    page = p.page
    wait_for_data(page, points=12)  # three seconds: the canary has rows before the cut
    # Seconds ahead of the live rows, so no production row of the same tick joins them.
    now = time.time() + 3.0
    # A canary limiter that cut its rate on 429s with a learned ceiling, then probes
    # (ceiling null): the chart keeps the last known ceiling.
    cut = Snapshot(
        ts=now - 1.0,
        variant="canary",
        interval_s=0.25,
        targets_up=1,
        targets_total=1,
        req_rate=4.0,
        rate_limit_rps=5.0,
        rate_limit_ceiling=12.0,
        rate_limit_adj_decrease=1.0,
        upstream_error_rates={"429": 1.0},
    )
    probing = dataclasses.replace(
        cut, ts=now - 0.5, rate_limit_ceiling=None, rate_limit_adj_decrease=0.0
    )
    stack.call(stack.publish, cut)
    stack.call(stack.publish, probing)
    page.wait_for_function(
        "(ts) => window.__dash.chart('limiter').data[0].includes(ts)", arg=probing.ts
    )
    series = page.evaluate(
        """([cut, probing]) => { const u = window.__dash.chart('limiter');
            const at = ts => u.data[0].indexOf(ts);
            const col = label => u.data[u.series.findIndex(s => s.label === label)];
            return Object.fromEntries(u.series.slice(1).map(s => [s.label,
                [col(s.label)[at(cut)], col(s.label)[at(probing)]]])); }""",
        [cut.ts, probing.ts],
    )
    assert series["canary allowed (stacked)"] == [5.0, 5.0]  # no production row at these ts
    assert series["ceiling (last known)"] == [12.0, 12.0]
    assert series["429 share"] == [25.0, 25.0]
    assert series["decrease"] == [5.0, None]
    assert series["increase"] == [None, None] and series["probe"] == [None, None]
    # The variant toggle does not change it: one upstream limit for both.
    assert page.evaluate("() => window.__dash.panels.limiter.series.length") == 8

    # Zoomed to two seconds, the pointer on the marker says what happened.
    page.locator("#panel-limiter").scroll_into_view_if_needed()
    page.evaluate(
        "(ts) => window.__dash.chart('limiter').setScale('x', {min: ts - 1, max: ts + 1})",
        cut.ts,
    )
    box = page.evaluate(
        """(ts) => { const u = window.__dash.chart('limiter');
            const r = u.over.getBoundingClientRect();
            return {x: r.left + u.valToPos(ts, 'x'), y: r.top + 20}; }""",
        cut.ts,
    )
    page.mouse.move(box["x"], box["y"])
    # Every chart marks it, and the synced crosshair shows its words on every chart.
    words = (
        "canary: decrease 10k → 5 req/s"
        " (reason not recorded; a decrease follows 429s from the upstream)"
    )
    for panel in PANELS:
        tip = page.locator(f"#panel-{panel} .adj-tip")
        tip.wait_for(state="visible")
        assert tip.inner_text() == words, panel
        drawn = page.evaluate("(id) => window.__dash.chart(id).__drawn.adjustments", panel)
        assert [(a["ts"], a["kind"], a["variant"]) for a in drawn] == [
            (cut.ts, "decrease", "canary")
        ], panel
        # The ▼ at the top of the plot is painted in the decrease colour.
        marker = page.evaluate(_MARKER_PIXEL_JS, [panel, cut.ts])
        assert marker["pixel"] == marker["color"], (panel, marker)
    page.mouse.move(box["x"] + 200, box["y"])
    page.locator("#panel-requests .adj-tip").wait_for(state="hidden")
    page.click("#back-to-live")
    assert p.page_errors == [] and p.console_errors == []


def test_hostile_strings_render_as_text(open_page: Callable[[str], Page], stack: Stack) -> None:
    page = open_page("?variant=canary").page
    wait_for_data(page)
    hostile = Snapshot(
        ts=time.time(),
        variant="canary",
        interval_s=0.25,
        targets_up=1,
        targets_total=1,
        req_rate=1.0,
        error_rate_pct=100.0,
        upstream_error_rates={HOSTILE: 1.0},
        rejections_by_reason={HOSTILE: 1.0},
    )
    stack.call(stack.publish, hostile)
    page.wait_for_function(
        "(s) => document.querySelector('#error-types').textContent.includes(s)", arg=HOSTILE
    )
    assert page.locator("#panel-errors .u-legend").inner_text().count(HOSTILE) == 1
    assert page.locator("img").count() == 0
    assert page.evaluate("() => window.__pwned") is None


# ---------------------------------------------------------------- smoothing (issue 18)

# The stream closed (no live rows), production's history replaced by four minutes of
# 2 s samples whose error % alternates 0 / 60 and p95 7.5 s / 4.5 ms, then drawn.
_SYNTHETIC_JS = """() => { const d = window.__dash;
    d.state.source.close();
    const now = Date.now() / 1000;
    const rows = [];
    for (let k = 120; k >= 0; k--) {
        const odd = k % 2 === 1;
        rows.push({ts: now - 2 * k, variant: 'production', interval_s: 2, stale: false,
                   req_rate: 10, error_rate_pct: odd ? 60 : 0,
                   latency_p95_ms: odd ? 7500 : 4.5, concurrent: 1, max_workers: 4});
    }
    d.state.data.production = rows;
    d.render();
    return rows[0].ts; }"""
# The drawn error % line (points 30 s after the first sample) and the verdict's figures.
_DRAWN_JS = """(first) => { const u = window.__dash.chart('errors');
    const ys = u.data[1].filter((y, k) => u.data[0][k] >= first + 30 && y != null);
    const fig = (m, w) => document.querySelector(
        `#verdict-production .tile[data-metric=${m}] .fig[data-window="${w}"]`).textContent;
    return {min: Math.min(...ys), max: Math.max(...ys), n: ys.length,
            errors: fig('errors', '1m'), p95: fig('p95', '1m')}; }"""
# One more raw sample, 2 s after the last: the 60 % / 7.5 s kind.
_NEXT_SAMPLE_JS = """() => { const d = window.__dash; const rows = d.state.data.production;
    const last = rows[rows.length - 1];
    rows.push(Object.assign({}, last, {ts: last.ts + 2,
        error_rate_pct: last.error_rate_pct ? 0 : 60,
        latency_p95_ms: last.error_rate_pct ? 4.5 : 7500}));
    d.render(); }"""


def _figure(text: str) -> float:
    match = re.fullmatch(r"(-?\d+(?:\.\d+)?)( ?(?:ms|s|%)) 1m", text)
    assert match, text
    return float(match[1]) * (1000 if match[2].strip() == "s" else 1)


def test_lines_are_smoothed_and_the_verdict_does_not_jump_with_a_sample(
    open_page: Callable[[str], Page],
) -> None:
    p = open_page("?variant=production&range=5m")
    page = p.page
    wait_for_data(page)
    assert page.locator("#smooth-toggle").get_attribute("aria-pressed") == "true"
    first = page.evaluate(_SYNTHETIC_JS)
    smoothed = page.evaluate(_DRAWN_JS, first)
    # A 30 s mean of samples alternating 0 / 60 % (equal requests) stays near 30 %.
    assert smoothed["n"] >= 90
    assert 25 <= smoothed["min"] <= smoothed["max"] <= 35, smoothed
    # The verdict's 1 min figures move little with one more sample, where the raw
    # samples jump 0 % <-> 60 % and 7.5 s <-> 4.5 ms.
    page.evaluate(_NEXT_SAMPLE_JS)
    after = page.evaluate(_DRAWN_JS, first)
    assert abs(_figure(after["errors"]) - _figure(smoothed["errors"])) <= 5, (smoothed, after)
    assert 25 <= _figure(after["errors"]) <= 35, after
    p95 = _figure(smoothed["p95"]), _figure(after["p95"])
    assert 2000 <= min(p95) and abs(p95[1] - p95[0]) <= 0.2 * p95[0], (smoothed, after)

    # Raw samples on request, and the choice in the shared URL.
    page.click("#smooth-toggle")
    assert "smooth=raw" in page.url
    raw = page.evaluate(_DRAWN_JS, first)
    assert (raw["min"], raw["max"]) == (0, 60), raw
    assert p.page_errors == [] and p.console_errors == []
