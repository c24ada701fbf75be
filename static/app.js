/* zai-proxy dashboard: history from /api/metrics, live snapshots from /api/events.
 *
 * No build step: a plain script on top of the uPlot IIFE bundle (global `uPlot`).
 * Text that comes from data is only ever set with textContent.
 */
(function () {
  "use strict";

  var RANGES = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
  var VARIANT_CHOICES = ["production", "canary", "both"];
  var THEMES = ["light", "dark"];
  var THEME_KEY = "zai-dashboard-theme";
  var MAX_BACKOFF_S = 30;
  // One colour per series slot; canary series reuse the palette dashed.
  var PALETTE = ["#2563eb", "#e8590c", "#2f9e44", "#9c36b5", "#c2255c", "#0c8599", "#e67700", "#5f3dc4"];

  var state = {
    variant: "production",
    range: "5m",
    theme: "light",
    scrapeInterval: 5,
    data: { production: [], canary: [] },
    loaded: false,
    conn: "connecting",
    source: null,
    attempt: 0,
    retryAt: 0,
    retryTimer: null,
    countdownTimer: null,
    backfillSeq: 0,
    targets: [],
    statusTimer: null,
  };

  var dash = { state: state, panels: {}, totals: null, errors: {}, backfills: 0, status: null, statusPolls: 0 };
  window.__dash = dash;

  // ------------------------------------------------------------------ formatting

  function fmtNum(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    var a = Math.abs(v);
    var units = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
    for (var i = 0; i < units.length; i++) {
      if (a >= units[i][0]) return trim(v / units[i][0]) + units[i][1];
    }
    return trim(v);
  }

  function trim(v) {
    var a = Math.abs(v);
    var digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
    return String(Number(v.toFixed(digits)));
  }

  function fmtMs(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    if (Math.abs(v) >= 1000) return trim(v / 1000) + " s";
    return trim(v) + " ms";
  }

  function fmtPct(v) {
    if (v === null || v === undefined || !isFinite(v)) return "—";
    return trim(v) + "%";
  }

  function exact(v) {
    if (v === null || v === undefined) return "—";
    return String(Math.round(v * 1000) / 1000);
  }

  function pad2(n) { return (n < 10 ? "0" : "") + n; }

  // 3:19pm, or 3:19:30pm with seconds: the page's local time, like uPlot's.
  function clock(d, seconds) {
    var h = d.getHours();
    var text = (h % 12 || 12) + ":" + pad2(d.getMinutes()) + (seconds ? ":" + pad2(d.getSeconds()) : "");
    return text + (h < 12 ? "am" : "pm");
  }

  function calendarDay(d) { return (d.getMonth() + 1) + "/" + d.getDate() + "/" + pad2(d.getFullYear() % 100); }

  function stamp(ts) {
    if (ts === null || ts === undefined) return "—";
    var d = new Date(ts * 1000);
    return calendarDay(d) + " " + clock(d, true);
  }

  // ------------------------------------------------------------------ URL, theme, controls

  function readParams() {
    var q = new URLSearchParams(window.location.search);
    var v = q.get("variant");
    if (VARIANT_CHOICES.indexOf(v) >= 0) state.variant = v;
    var r = q.get("range");
    if (Object.prototype.hasOwnProperty.call(RANGES, r)) state.range = r;
    var t = q.get("theme");
    var stored = null;
    try { stored = window.localStorage.getItem(THEME_KEY); } catch (e) { stored = null; }
    if (THEMES.indexOf(t) >= 0) state.theme = t;
    else if (THEMES.indexOf(stored) >= 0) state.theme = stored;
    else if (window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches) state.theme = "dark";
  }

  function writeParams() {
    var q = new URLSearchParams(window.location.search);
    q.set("variant", state.variant);
    q.set("range", state.range);
    q.set("theme", state.theme);
    window.history.replaceState(null, "", window.location.pathname + "?" + q.toString());
  }

  function applyTheme() {
    document.documentElement.setAttribute("data-theme", state.theme);
    try { window.localStorage.setItem(THEME_KEY, state.theme); } catch (e) { /* private mode */ }
    var button = document.getElementById("theme-toggle");
    // The button names the theme it switches to.
    button.textContent = state.theme === "dark" ? "Light" : "Dark";
    button.setAttribute("aria-pressed", state.theme === "dark" ? "true" : "false");
  }

  function syncControls() {
    var buttons = document.querySelectorAll("#variant-toggle button");
    for (var i = 0; i < buttons.length; i++) {
      var b = buttons[i];
      b.setAttribute("aria-pressed", b.getAttribute("data-variant") === state.variant ? "true" : "false");
    }
    document.getElementById("range-select").value = state.range;
  }

  function bindControls() {
    var buttons = document.querySelectorAll("#variant-toggle button");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (ev) {
        state.variant = ev.currentTarget.getAttribute("data-variant");
        syncControls();
        writeParams();
        renderAll();
      });
    }
    document.getElementById("range-select").addEventListener("change", function (ev) {
      state.range = ev.target.value;
      writeParams();
      trimAll();
      renderAll();
      backfill();
    });
    document.getElementById("theme-toggle").addEventListener("click", function () {
      state.theme = state.theme === "dark" ? "light" : "dark";
      applyTheme();
      writeParams();
      destroyCharts();
      renderAll();
    });
    document.getElementById("reconnect-now").addEventListener("click", function () {
      connect();
    });
  }

  // ------------------------------------------------------------------ data

  function selectedVariants() {
    return state.variant === "both" ? ["production", "canary"] : [state.variant];
  }

  function windowStart() {
    return Date.now() / 1000 - RANGES[state.range];
  }

  function trimAll() {
    var start = windowStart();
    for (var v in state.data) {
      var rows = state.data[v];
      var i = 0;
      while (i < rows.length && rows[i].ts < start) i++;
      if (i) state.data[v] = rows.slice(i);
    }
  }

  function merge(rows, extra) {
    var byTs = new Map();
    rows.concat(extra).forEach(function (s) { byTs.set(s.ts, s); });
    return Array.from(byTs.values()).sort(function (a, b) { return a.ts - b.ts; });
  }

  function addSnapshot(s) {
    if (!s || typeof s.ts !== "number" || typeof s.variant !== "string") return;
    if (!state.data[s.variant]) state.data[s.variant] = [];
    var rows = state.data[s.variant];
    if (!rows.length || rows[rows.length - 1].ts < s.ts) rows.push(s);
    else state.data[s.variant] = merge(rows, [s]);
  }

  function backfill() {
    var seq = ++state.backfillSeq;
    var range = state.range;
    return fetch("/api/metrics?range=" + encodeURIComponent(range) + "&variant=all", { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("history request failed: HTTP " + r.status);
        return r.json();
      })
      .then(function (rows) {
        if (seq !== state.backfillSeq) return;
        var fresh = {};
        rows.forEach(function (s) { (fresh[s.variant] = fresh[s.variant] || []).push(s); });
        // Live snapshots that arrived while the request was in flight are kept.
        var variants = new Set(Object.keys(fresh).concat(Object.keys(state.data)));
        variants.forEach(function (v) { state.data[v] = merge(fresh[v] || [], state.data[v] || []); });
        state.loaded = true;
        dash.backfills++;
        trimAll();
        scheduleRender();
      })
      .catch(function (err) {
        dash.errors.backfill = String(err && err.message ? err.message : err);
      });
  }

  // ------------------------------------------------------------------ panels

  function field(name) {
    return function (s) { var v = s[name]; return typeof v === "number" ? v : null; };
  }

  function mapKey(name, key) {
    return function (s) {
      var m = s[name];
      if (!m || !Object.prototype.hasOwnProperty.call(m, key)) return null;
      var v = m[key];
      return typeof v === "number" ? v : null;
    };
  }

  // Keys of a map field that were non-zero somewhere in `rows`: a type that never
  // happened in the window is not worth a series.
  function mapKeys(name, rows) {
    var keys = new Set();
    rows.forEach(function (s) {
      var m = s[name];
      if (m) Object.keys(m).forEach(function (k) { if (m[k]) keys.add(k); });
    });
    return Array.from(keys).sort();
  }

  var PANELS = [
    {
      id: "requests",
      series: function () { return [{ label: "req/s", get: field("req_rate"), fmt: fmtNum }]; },
    },
    {
      id: "latency",
      series: function () {
        return [
          { label: "p50", get: field("latency_p50_ms"), fmt: fmtMs },
          { label: "p95", get: field("latency_p95_ms"), fmt: fmtMs },
          { label: "p99", get: field("latency_p99_ms"), fmt: fmtMs },
        ];
      },
    },
    {
      id: "tokens",
      series: function () {
        return [
          { label: "input/s", get: field("token_rate_in"), fmt: fmtNum },
          { label: "output/s", get: field("token_rate_out"), fmt: fmtNum },
          { label: "cache_read/s", get: field("token_rate_cache_read"), fmt: fmtNum },
          { label: "cache_write/s", get: field("token_rate_cache_write"), fmt: fmtNum },
        ];
      },
    },
    {
      id: "concurrency",
      series: function () {
        return [
          { label: "concurrent", get: field("concurrent"), fmt: fmtNum },
          { label: "max_workers", get: field("max_workers"), fmt: fmtNum },
        ];
      },
    },
    {
      id: "limiter",
      right: "count",
      series: function () {
        return [
          { label: "rate req/s", get: field("rate_limit_rps"), fmt: fmtNum },
          { label: "ceiling", get: field("rate_limit_ceiling"), fmt: fmtNum },
          { label: "increase", get: field("rate_limit_adj_increase"), fmt: fmtNum, scale: "count" },
          { label: "decrease", get: field("rate_limit_adj_decrease"), fmt: fmtNum, scale: "count" },
          { label: "probe", get: field("rate_limit_adj_probe"), fmt: fmtNum, scale: "count" },
          { label: "rejections", get: field("rejections"), fmt: fmtNum, scale: "count" },
        ];
      },
    },
    {
      id: "errors",
      right: "rate",
      series: function (rows) {
        var out = [{ label: "error %", get: field("error_rate_pct"), fmt: fmtPct }];
        mapKeys("upstream_error_rates", rows).forEach(function (key) {
          out.push({ label: key + "/s", get: mapKey("upstream_error_rates", key), fmt: fmtNum, scale: "rate" });
        });
        return out;
      },
    },
  ];

  var charts = {};
  // The live uPlot of a panel, for the tests (window.__dash.chart("latency")).
  dash.chart = function (id) { return charts[id] ? charts[id].plot : null; };

  function panelEl(id) { return document.getElementById("panel-" + id); }

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function destroyCharts() {
    Object.keys(charts).forEach(function (id) {
      charts[id].plot.destroy();
      delete charts[id];
    });
  }

  // Rows of each selected variant, aligned on one x axis.  uPlot.join marks points a
  // variant lacks as undefined (spanned), while a null from the data stays a gap.
  function buildData(panel) {
    var variants = selectedVariants();
    var all = [];
    variants.forEach(function (v) { all = all.concat(state.data[v] || []); });
    var defs = panel.series(all);
    var tables = [];
    var series = [];
    variants.forEach(function (v, vi) {
      var rows = state.data[v] || [];
      var table = [rows.map(function (s) { return s.ts; })];
      defs.forEach(function (d, di) {
        table.push(rows.map(d.get));
        series.push({
          label: variants.length > 1 ? d.label + " (" + v + ")" : d.label,
          def: d,
          variant: v,
          color: PALETTE[di % PALETTE.length],
          dash: vi === 1 ? [6, 4] : null,
        });
      });
      tables.push(table);
    });
    var data;
    if (tables.length === 1) {
      data = tables[0];
    } else {
      var modes = tables.map(function (t) { return t.slice(1).map(function () { return 1; }); });
      data = uPlot.join(tables, modes);
    }
    return { data: data, series: series };
  }

  // Time axis: one line of times, and under the first tick and each new day a second line
  // with the date (the year, for ticks days apart).  Each line holds one kind of label, at
  // most as wide as the ticks are apart (TIME_SPACE), so no two labels ever overlap
  // (uPlot's own format put "12/2/26 3:19am" under the first tick, running into the
  // "3:20am" under the next minute's).
  var DAY_S = 86400;
  var TIME_SPACE = 80;
  var TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, DAY_S, 2 * DAY_S, 7 * DAY_S, 14 * DAY_S];

  function timeAxisValues(u, splits, axisIdx, space, incr) {
    var previous = null;
    return splits.map(function (ts) {
      var d = new Date(ts * 1000);
      var top, bottom;
      if (incr >= DAY_S) {
        top = (d.getMonth() + 1) + "/" + d.getDate();
        bottom = String(d.getFullYear());
      } else {
        top = clock(d, incr < 60);
        bottom = calendarDay(d);
      }
      var label = bottom === previous ? top : top + "\n" + bottom;
      previous = bottom;
      return label;
    });
  }

  // The legend shows the values under the pointer; with no pointer over the chart, each
  // series' latest point (what hovering the right edge would show), so the panel reads
  // at a glance.  A point another variant has and this series lacks (undefined after
  // uPlot.join) is skipped; a null is a real "no value" and shows as such.
  function latestIndex(ys) {
    for (var i = ys.length - 1; i >= 0; i--) if (ys[i] !== undefined) return i;
    return null;
  }

  function legendValue(fmt) {
    return function (u, v, sidx, idx) {
      if (idx === null || idx === undefined) {
        var ys = u.data[sidx];
        var last = latestIndex(ys);
        v = last === null ? null : ys[last];
      }
      return fmt(v);
    };
  }

  function makeChart(panel, el, built) {
    var text = cssVar("--text");
    var grid = cssVar("--grid");
    var axis = { stroke: text, grid: { stroke: grid }, ticks: { stroke: grid } };
    var first = built.series.find(function (s) { return !s.def.scale; });
    var leftFmt = first ? first.def.fmt : fmtNum;
    var opts = {
      width: Math.max(200, el.clientWidth),
      height: 240,
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
      scales: { x: { time: true } },
      axes: [
        Object.assign({}, axis, { space: TIME_SPACE, incrs: TIME_INCRS, values: timeAxisValues }),
        Object.assign({}, axis, {
          size: 60,
          values: function (u, vals) { return vals.map(leftFmt); },
        }),
      ],
      series: [{ label: "time", value: legendValue(stamp) }].concat(
        built.series.map(function (s) {
          return {
            label: s.label,
            stroke: s.color,
            width: 1.5,
            dash: s.dash || undefined,
            scale: s.def.scale || "y",
            spanGaps: false,
            points: { show: false },
            // The legend doubles as the tooltip: exact values at the cursor.
            value: legendValue(exact),
          };
        })
      ),
    };
    if (panel.right) {
      opts.axes.push(Object.assign({}, axis, {
        side: 1,
        scale: panel.right,
        size: 50,
        grid: { show: false },
        values: function (u, vals) { return vals.map(fmtNum); },
      }));
    }
    return new uPlot(opts, built.data, el);
  }

  function renderPanel(panel) {
    var root = panelEl(panel.id);
    var errorEl = root.querySelector(".panel-error");
    try {
      if (!state.loaded) return;
      var chartEl = root.querySelector(".chart");
      var built = buildData(panel);
      var signature = built.series.map(function (s) { return s.label; }).join("\u0000");
      var current = charts[panel.id];
      if (current && current.signature === signature) {
        current.plot.setData(built.data);
      } else {
        if (current) current.plot.destroy();
        charts[panel.id] = { plot: makeChart(panel, chartEl, built), signature: signature };
      }
      root.querySelector(".skeleton").hidden = true;
      errorEl.hidden = true;
      dash.panels[panel.id] = {
        points: built.data[0].length,
        series: built.series.map(function (s, i) {
          var ys = built.data[i + 1];
          var nonNull = 0;
          for (var k = 0; k < ys.length; k++) if (ys[k] !== null && ys[k] !== undefined) nonNull++;
          return { label: s.label, variant: s.variant, length: ys.length, nonNull: nonNull };
        }),
      };
      if (panel.id === "tokens") renderTokenStrip();
      if (panel.id === "errors") renderErrorTypes();
    } catch (err) {
      dash.errors[panel.id] = String(err && err.message ? err.message : err);
      errorEl.textContent = "This panel failed: " + dash.errors[panel.id];
      errorEl.hidden = false;
      root.querySelector(".skeleton").hidden = true;
    }
  }

  function renderTokenStrip() {
    var strip = document.getElementById("token-strip");
    var totals = { in: 0, out: 0, cache_read: 0, cache_write: 0 };
    var firstTs = null;
    var lastTs = null;
    var count = 0;
    selectedVariants().forEach(function (v) {
      (state.data[v] || []).forEach(function (s) {
        count++;
        if (firstTs === null || s.ts < firstTs) firstTs = s.ts;
        if (lastTs === null || s.ts > lastTs) lastTs = s.ts;
        Object.keys(totals).forEach(function (k) {
          var val = s["tokens_" + k];
          if (typeof val === "number") totals[k] += val;
        });
      });
    });
    strip.textContent = state.range + " window: " + fmtNum(totals.in) + " input / " + fmtNum(totals.out) +
      " output / " + fmtNum(totals.cache_read) + " cache_read / " + fmtNum(totals.cache_write) + " cache_write";
    strip.setAttribute("data-in", String(totals.in));
    strip.setAttribute("data-out", String(totals.out));
    strip.setAttribute("data-cache-read", String(totals.cache_read));
    strip.setAttribute("data-cache-write", String(totals.cache_write));
    strip.setAttribute("data-first-ts", firstTs === null ? "" : String(firstTs));
    strip.setAttribute("data-last-ts", lastTs === null ? "" : String(lastTs));
    strip.setAttribute("data-count", String(count));
    strip.setAttribute("data-variants", selectedVariants().join(","));
    dash.totals = { totals: totals, firstTs: firstTs, lastTs: lastTs, count: count };
  }

  function renderErrorTypes() {
    var list = document.getElementById("error-types");
    list.textContent = "";
    selectedVariants().forEach(function (v) {
      var rows = state.data[v] || [];
      var latest = rows.length ? rows[rows.length - 1] : null;
      var keys = mapKeys("upstream_error_rates", rows);
      keys.forEach(function (key) {
        var li = document.createElement("li");
        var value = latest && latest.upstream_error_rates ? latest.upstream_error_rates[key] : null;
        li.textContent = (state.variant === "both" ? v + " " : "") + key + ": " + fmtNum(value) + "/s";
        list.appendChild(li);
      });
    });
  }

  // ------------------------------------------------------------------ limiter and pods

  // The variant's limiter in one line, from its latest snapshot: one shared limiter
  // (redis) or one per pod (memory), and the pods whose redis is down (they run a local
  // bucket of their own until it answers again).
  function limiterLine(v, s) {
    var backend = s.rate_limit_backend;
    var pods = typeof s.targets_up === "number" ? s.targets_up : 0;
    var text;
    if (backend === "redis") {
      text = "shared (redis)" + replicasText(s);
    } else if (backend === "memory") {
      text = "per pod (memory), " + pods + (pods === 1 ? " pod" : " pods");
    } else if (backend === "mixed") {
      text = "mixed: shared (redis)" + replicasText(s) + ", other pods per pod (memory)";
    } else {
      text = "—";
    }
    var down = typeof s.rate_limit_backend_up === "number" ? Math.round(pods - s.rate_limit_backend_up) : 0;
    if (down > 0) text += "; redis down on " + down + " of " + pods + " pods (local bucket)";
    text += " · rate " + fmtNum(s.rate_limit_rps) + " req/s, ceiling " + fmtNum(s.rate_limit_ceiling);
    if (typeof s.rate_limit_backend_error_rate === "number" && s.rate_limit_backend_error_rate > 0) {
      text += " · " + fmtNum(s.rate_limit_backend_error_rate) + " backend errors/s";
    }
    return { text: v + ": " + text, down: down };
  }

  function replicasText(s) {
    if (typeof s.rate_limit_replicas !== "number") return "";
    var n = Math.round(s.rate_limit_replicas);
    return ", " + n + (n === 1 ? " replica" : " replicas");
  }

  function podHost(url) {
    try { return new URL(url).host; } catch (e) { return String(url); }
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function renderLimiterInfo() {
    var box = document.getElementById("limiter-info");
    box.textContent = "";
    selectedVariants().forEach(function (v) {
      var section = document.createElement("div");
      section.className = "limiter-variant";
      section.id = "limiter-" + v;
      var s = latestLive(v) || {};
      var line = limiterLine(v, s);
      var p = document.createElement("p");
      p.className = "limiter-line" + (line.down > 0 ? " bad" : "");
      p.id = "limiter-line-" + v;
      p.setAttribute("data-backend", typeof s.rate_limit_backend === "string" ? s.rate_limit_backend : "");
      p.textContent = line.text;
      section.appendChild(p);

      var pods = state.targets.filter(function (t) { return t && t.variant === v; });
      if (pods.length) {
        var table = document.createElement("table");
        table.className = "pods";
        table.id = "pods-" + v;
        var head = document.createElement("tr");
        ["pod", "scrape", "limiter", "judge", "rate"].forEach(function (name) {
          var th = document.createElement("th");
          th.textContent = name;
          head.appendChild(th);
        });
        var thead = document.createElement("thead");
        thead.appendChild(head);
        table.appendChild(thead);
        var body = document.createElement("tbody");
        pods.forEach(function (t) {
          var lim = t.limiter || null;
          var row = document.createElement("tr");
          row.className = "pod";
          row.setAttribute("data-url", String(t.url));
          row.setAttribute("data-up", t.up ? "true" : "false");
          row.setAttribute("data-backend", lim ? String(lim.backend) : "");
          row.setAttribute("data-backend-up", lim ? (lim.up ? "true" : "false") : "");
          // A proxy on memory judges its own windows: only a shared limiter's judge is news.
          var judge = !!(lim && lim.judge && lim.backend === "redis");
          row.setAttribute("data-judge", judge ? "true" : "false");
          cell(row, podHost(t.url));
          cell(row, t.up ? "up" : "down", t.up ? "ok" : "bad");
          if (!lim) cell(row, "—");
          else if (lim.up) cell(row, lim.backend + " up", "ok");
          else cell(row, lim.backend + " down (local bucket)", "bad");
          cell(row, judge ? "judge" : "");
          cell(row, lim ? fmtNum(lim.rate) : "—", "num");
          if ((lim && !lim.up) || !t.up) row.classList.add("bad");
          body.appendChild(row);
        });
        table.appendChild(body);
        section.appendChild(table);
      }
      box.appendChild(section);
    });
  }

  // The pods and their limiters come from /api/status, polled while the stream is up.
  function pollStatus() {
    if (state.statusTimer) clearTimeout(state.statusTimer);
    state.statusTimer = null;
    if (state.conn !== "connected") return;
    fetch("/api/status", { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("status request failed: HTTP " + r.status);
        return r.json();
      })
      .then(function (body) {
        state.targets = Array.isArray(body.targets) ? body.targets : [];
        dash.status = body;
        dash.statusPolls++;
        try { renderLimiterInfo(); } catch (err) { dash.errors.limiterInfo = String(err); }
      })
      .catch(function () { /* the stream's reconnect says the dashboard is away */ })
      .then(function () {
        if (state.conn !== "connected" || state.statusTimer) return;
        var every = Math.min(5, Math.max(1, state.scrapeInterval));
        state.statusTimer = setTimeout(pollStatus, every * 1000);
      });
  }

  // ------------------------------------------------------------------ status bar

  function isStale(v) {
    var rows = state.data[v] || [];
    if (!rows.length) return true;
    var latest = rows[rows.length - 1];
    return !!latest.stale || Date.now() / 1000 - latest.ts > 3 * state.scrapeInterval;
  }

  function latestLive(v) {
    var rows = state.data[v] || [];
    for (var i = rows.length - 1; i >= 0; i--) if (!rows[i].stale) return rows[i];
    return null;
  }

  function renderStatus() {
    var box = document.getElementById("status-variants");
    box.textContent = "";
    selectedVariants().forEach(function (v) {
      var s = latestLive(v) || {};
      var item = document.createElement("span");
      item.className = "status-variant";
      item.id = "status-" + v;
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = v;
      item.appendChild(name);
      var tokenRate = null;
      ["token_rate_in", "token_rate_out"].forEach(function (k) {
        if (typeof s[k] === "number") tokenRate = (tokenRate || 0) + s[k];
      });
      var workers = typeof s.concurrent === "number" || typeof s.max_workers === "number"
        ? fmtNum(s.concurrent) + "/" + fmtNum(s.max_workers) : "—";
      [
        ["req", fmtNum(s.req_rate) + " req/s"],
        ["p50", "p50 " + fmtMs(s.latency_p50_ms)],
        ["tokens", fmtNum(tokenRate) + " tok/s"],
        ["errors", fmtPct(s.error_rate_pct) + " errors"],
        ["workers", workers + " workers"],
      ].forEach(function (pair) {
        var m = document.createElement("span");
        m.className = "metric";
        m.setAttribute("data-metric", pair[0]);
        m.textContent = pair[1];
        item.appendChild(m);
      });
      var stale = document.createElement("span");
      stale.className = "stale-marker";
      stale.id = "stale-" + v;
      stale.textContent = "STALE";
      stale.hidden = !isStale(v);
      item.appendChild(stale);
      box.appendChild(item);
    });
  }

  // ------------------------------------------------------------------ rendering

  var renderQueued = false;

  function renderAll() {
    renderQueued = false;
    PANELS.forEach(renderPanel);
    try { renderStatus(); } catch (err) { dash.errors.status = String(err); }
    try { renderLimiterInfo(); } catch (err) { dash.errors.limiterInfo = String(err); }
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    window.requestAnimationFrame(renderAll);
  }

  function resizeCharts() {
    // Deferred, and only on a width change, so resizing never feeds back into the observer.
    window.requestAnimationFrame(function () {
      Object.keys(charts).forEach(function (id) {
        var el = panelEl(id).querySelector(".chart");
        var width = Math.max(200, el.clientWidth);
        if (width !== charts[id].plot.width) charts[id].plot.setSize({ width: width, height: 240 });
      });
    });
  }

  // ------------------------------------------------------------------ live connection

  function setConn(name) {
    state.conn = name;
    var el = document.getElementById("conn-state");
    el.textContent = name;
    el.setAttribute("data-state", name);
  }

  function clearRetry() {
    if (state.retryTimer) clearTimeout(state.retryTimer);
    if (state.countdownTimer) clearInterval(state.countdownTimer);
    state.retryTimer = null;
    state.countdownTimer = null;
  }

  function connect() {
    clearRetry();
    if (state.source) state.source.close();
    // While retrying, the reconnect box stays up (no flicker at each attempt) and the
    // state stays "reconnecting" until the server says hello.
    if (state.attempt > 0) {
      setConn("reconnecting");
      document.getElementById("countdown").textContent = "Reconnecting now…";
    } else {
      setConn("connecting");
    }
    var source = new EventSource("/api/events");
    state.source = source;
    source.addEventListener("connected", function (ev) {
      if (state.source !== source) return;
      document.getElementById("reconnect").hidden = true;
      try {
        var info = JSON.parse(ev.data);
        if (typeof info.scrape_interval_s === "number" && info.scrape_interval_s > 0) {
          state.scrapeInterval = info.scrape_interval_s;
        }
      } catch (e) { /* keep the previous interval */ }
      state.attempt = 0;
      setConn("connected");
      backfill();
      pollStatus();
    });
    source.addEventListener("snapshot", function (ev) {
      if (state.source !== source) return;
      var s;
      try { s = JSON.parse(ev.data); } catch (e) { return; }
      addSnapshot(s);
      trimAll();
      if (state.loaded) scheduleRender();
    });
    source.onerror = function () {
      if (state.source !== source) return;
      // The browser's own retry has no backoff and no countdown: we do it ourselves.
      source.close();
      state.source = null;
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    clearRetry();
    var delay = Math.min(MAX_BACKOFF_S, Math.pow(2, state.attempt));
    state.attempt++;
    state.retryAt = Date.now() + delay * 1000;
    setConn("reconnecting");
    document.getElementById("reconnect").hidden = false;
    var tick = function () {
      var left = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
      document.getElementById("countdown").textContent = "Reconnecting in " + left + "s";
    };
    tick();
    state.countdownTimer = setInterval(tick, 250);
    state.retryTimer = setTimeout(connect, delay * 1000);
  }

  // ------------------------------------------------------------------ start

  function start() {
    readParams();
    applyTheme();
    syncControls();
    writeParams();
    bindControls();
    if (window.ResizeObserver) new ResizeObserver(resizeCharts).observe(document.getElementById("grid"));
    else window.addEventListener("resize", resizeCharts);
    // Staleness depends on the clock, not only on new data.
    setInterval(function () { try { renderStatus(); } catch (err) { dash.errors.status = String(err); } }, 1000);
    renderStatus();
    connect();
  }

  dash.format = { num: fmtNum, ms: fmtMs, pct: fmtPct };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
