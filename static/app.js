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
  // The page keeps at least this much history, whatever the range: the verdict strip
  // compares canary with production over the last 10 minutes.
  var KEEP_S = 900;
  var COMPARE_S = 600;
  // The lines are drawn as a moving mean over this many seconds (the smoothing toggle
  // switches it off): see smoothColumn.
  var SMOOTH_S = 30;
  // A colour family per variant (production blues, canary oranges), one shade per series
  // slot, per theme: every shade at least 4.5:1 against its theme's panel.
  var FAMILIES = {
    light: {
      production: ["#1d4ed8", "#0e7490", "#4338ca", "#0369a1", "#1e3a8a", "#155e75"],
      canary: ["#c2410c", "#a16207", "#be123c", "#9a3412", "#b45309", "#9f1239"],
    },
    dark: {
      production: ["#60a5fa", "#22d3ee", "#a5b4fc", "#7dd3fc", "#93c5fd", "#67e8f9"],
      canary: ["#fb923c", "#facc15", "#fb7185", "#fdba74", "#fcd34d", "#fda4af"],
    },
  };

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
    // [min, max] of a drag-zoom; null while the charts follow now.
    zoom: null,
    // "panel:label" of the series the operator switched off (the URL's `hide`).
    hidden: new Set(),
    thresholds: null,
    historyError: null,
    // Lines drawn as SMOOTH_S means (the URL's smooth=raw switches it off).
    smooth: true,
    // [from, to] of each stretch without a row from any variant (the dashboard was down).
    outages: [],
    // Every limiter adjustment in the data: {ts, variant, kind, before, after}.
    adjustments: [],
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
    state.smooth = q.get("smooth") !== "raw";
    var hide = q.get("hide");
    state.hidden = new Set(hide ? hide.split(",").filter(Boolean) : []);
  }

  function writeParams() {
    var q = new URLSearchParams(window.location.search);
    q.set("variant", state.variant);
    q.set("range", state.range);
    q.set("theme", state.theme);
    if (state.smooth) q.delete("smooth"); else q.set("smooth", "raw");
    if (state.hidden.size) q.set("hide", Array.from(state.hidden).sort().join(","));
    else q.delete("hide");
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
    var smooth = document.getElementById("smooth-toggle");
    smooth.setAttribute("aria-pressed", state.smooth ? "true" : "false");
    smooth.textContent = state.smooth ? "Lines: " + SMOOTH_S + " s mean" : "Lines: raw samples";
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
    document.getElementById("smooth-toggle").addEventListener("click", function () {
      state.smooth = !state.smooth;
      syncControls();
      writeParams();
      renderAll();
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

  // Rows of the variant inside the range (the page keeps up to KEEP_S more for the verdict).
  function windowRows(v) {
    var start = windowStart();
    return (state.data[v] || []).filter(function (s) { return s.ts >= start; });
  }

  // What the charts show: the zoom, or the range up to now.
  function viewWindow() {
    if (state.zoom) return state.zoom;
    var now = Date.now() / 1000;
    return [now - RANGES[state.range], now];
  }

  function trimAll() {
    var start = Math.min(windowStart(), Date.now() / 1000 - KEEP_S);
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
    // At least 15 minutes, for the verdict strip's 10-minute comparison.
    var range = RANGES[state.range] < KEEP_S ? "15m" : state.range;
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
        state.historyError = null;
        delete dash.errors.backfill;
        dash.backfills++;
        trimAll();
        scheduleRender();
      })
      .catch(function (err) {
        if (seq !== state.backfillSeq) return;
        // Shown in every panel with a retry, never left as a grey skeleton.
        state.historyError = String(err && err.message ? err.message : err);
        dash.errors.backfill = state.historyError;
        scheduleRender();
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

  function withUnit(unit) {
    return function (v) {
      if (v === null || v === undefined || !isFinite(v)) return "—";
      return fmtNum(v) + (unit ? " " + unit : "");
    };
  }

  var PANELS = [
    {
      id: "requests",
      axis: fmtNum,
      series: function () { return [{ label: "req/s", get: field("req_rate"), fmt: withUnit("req/s") }]; },
    },
    {
      id: "latency",
      axis: fmtMs,
      series: function () {
        return [
          { label: "p50", get: field("latency_p50_ms"), fmt: fmtMs, weight: requestWeight },
          { label: "p95", get: field("latency_p95_ms"), fmt: fmtMs, weight: requestWeight },
          { label: "p99", get: field("latency_p99_ms"), fmt: fmtMs, weight: requestWeight },
        ];
      },
    },
    {
      id: "tokens",
      axis: fmtNum,
      series: function () {
        return [
          { label: "input/s", get: field("token_rate_in"), fmt: withUnit("tok/s") },
          { label: "output/s", get: field("token_rate_out"), fmt: withUnit("tok/s") },
          { label: "cache_read/s", get: field("token_rate_cache_read"), fmt: withUnit("tok/s") },
          { label: "cache_write/s", get: field("token_rate_cache_write"), fmt: withUnit("tok/s") },
        ];
      },
    },
    {
      id: "concurrency",
      axis: fmtNum,
      series: function () {
        return [
          { label: "concurrent", get: field("concurrent"), fmt: withUnit("req") },
          { label: "max_workers", get: field("max_workers"), fmt: withUnit("workers") },
        ];
      },
    },
    { id: "limiter", right: "share", rightFmt: fmtPct, axis: fmtNum, build: function () { return buildLimiter(); } },
    {
      id: "errors",
      right: "rate",
      axis: fmtPct,
      series: function (rows) {
        var out = [{ label: "error %", get: field("error_rate_pct"), fmt: fmtPct, weight: requestWeight }];
        mapKeys("upstream_error_rates", rows).forEach(function (key) {
          out.push({ label: key + "/s", get: mapKey("upstream_error_rates", key), fmt: withUnit("/s"), scale: "rate" });
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

  function median(xs) {
    if (!xs.length) return null;
    var sorted = xs.slice().sort(function (a, b) { return a - b; });
    return sorted[Math.floor(sorted.length / 2)];
  }

  // Time between two rows beyond which nothing was recorded: three of the usual steps
  // (5 s rows, or 1 min rows for long ranges), and never less than three scrapes.
  function gapLimit(rows) {
    var steps = [];
    for (var i = 1; i < rows.length; i++) steps.push(rows[i].ts - rows[i - 1].ts);
    var step = median(steps);
    return Math.max(3 * state.scrapeInterval, 3 * (step || 0));
  }

  // Each point of a smoothed line is the mean of the samples over the SMOOTH_S before it,
  // weighted by the time each sample covers (or, for a share or a percentile, by the
  // requests it saw): at a 3 % fault rate a 0.25-2 s sample holds a handful of requests,
  // and one failure among them draws a 40-70 % spike.  The mean never reaches across a
  // gap (a null resets it); rows coarser than the window are drawn as they are.
  function smoothColumn(ts, ys, weights, breaks) {
    var out = new Array(ys.length);
    var lo = 0, sum = 0, wsum = 0;
    var take = function (k, sign) {
      if (ys[k] === null || ys[k] === undefined) return;
      sum += sign * ys[k] * weights[k];
      wsum += sign * weights[k];
    };
    for (var k = 0; k < ys.length; k++) {
      if (breaks[k]) {
        out[k] = null;
        lo = k + 1; sum = 0; wsum = 0;
        continue;
      }
      take(k, 1);
      while (lo < k && ts[lo] <= ts[k] - SMOOTH_S) { take(lo, -1); lo++; }
      // A sample without a value (no request finished in it) takes the mean of the others.
      out[k] = wsum > 1e-9 ? sum / wsum : ys[k];
    }
    return out;
  }

  function coverWeight(s) { return s.interval_s > 0 ? s.interval_s : 1; }

  function requestWeight(s) { return (s.req_rate || 0) * coverWeight(s); }

  // Rows of each selected variant, aligned on one x axis.  Where a variant has no row for
  // longer than gapLimit (the dashboard or its store was down), a row of nulls is put in,
  // so the line breaks there instead of running straight across the outage.  uPlot.join
  // marks points a variant lacks as undefined (spanned), while a null stays a gap.
  function buildData(panel) {
    var variants = selectedVariants();
    var all = [];
    variants.forEach(function (v) { all = all.concat(windowRows(v)); });
    var defs = panel.series(all);
    var tables = [];
    var series = [];
    var gaps = [];
    var start = windowStart();
    variants.forEach(function (v) {
      // Smoothing starts SMOOTH_S before the window, so its first points are means too.
      var from = state.smooth ? start - SMOOTH_S : start;
      var rows = (state.data[v] || []).filter(function (s) { return s.ts >= from; });
      var limit = gapLimit(rows);
      var ts = [];
      var cols = defs.map(function () { return []; });
      var weights = defs.map(function () { return []; });
      var breaks = [];
      rows.forEach(function (s, i) {
        if (i > 0 && s.ts - rows[i - 1].ts > limit) {
          var at = (s.ts + rows[i - 1].ts) / 2;
          if (rows[i - 1].ts >= start) gaps.push({ variant: v, from: rows[i - 1].ts, to: s.ts });
          ts.push(at);
          cols.forEach(function (c) { c.push(null); });
          weights.forEach(function (c) { c.push(0); });
          breaks.push(true);
        }
        breaks.push(false);
        ts.push(s.ts);
        defs.forEach(function (d, di) {
          cols[di].push(d.get(s));
          weights[di].push((d.weight || coverWeight)(s));
        });
      });
      if (state.smooth) cols = cols.map(function (c, di) { return smoothColumn(ts, c, weights[di], breaks); });
      var first = 0;
      while (first < ts.length && ts[first] < start) first++;
      ts = ts.slice(first);
      cols = cols.map(function (c) { return c.slice(first); });
      var shades = FAMILIES[state.theme][v] || FAMILIES[state.theme].production;
      defs.forEach(function (d, di) {
        series.push({
          label: variants.length > 1 ? d.label + " (" + v + ")" : d.label,
          def: d,
          variant: v,
          color: shades[di % shades.length],
          // Within a family a second round of shades is dashed; canary is told by hue.
          dash: di >= shades.length ? [6, 4] : null,
        });
      });
      tables.push([ts].concat(cols));
    });
    var data;
    if (tables.length === 1) {
      data = tables[0];
    } else {
      var modes = tables.map(function (t) { return t.slice(1).map(function () { return 1; }); });
      data = uPlot.join(tables, modes);
    }
    return { data: data, series: series, gaps: gaps };
  }

  // Last, mean and max of each series over the window, for the legend.
  function seriesStats(data) {
    return data.map(function (ys, i) {
      if (i === 0) return null;
      var sum = 0, n = 0, max = null, last = null;
      for (var k = 0; k < ys.length; k++) {
        var y = ys[k];
        if (y === null || y === undefined) continue;
        sum += y; n++;
        if (max === null || y > max) max = y;
        last = y;
      }
      return { last: last, mean: n ? sum / n : null, max: max };
    });
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

  // The legend is a table: per series its last, mean and max over the window, in the
  // series' unit, shown without hovering.  Under the pointer, "last" is the value at the
  // pointer instead.  A point another variant has and this series lacks (undefined after
  // uPlot.join) is skipped; a null is a real "no value" and shows as "—".
  function latestIndex(ys) {
    for (var i = ys.length - 1; i >= 0; i--) if (ys[i] !== undefined) return i;
    return null;
  }

  function legendValues(fmt) {
    return function (u, sidx, idx) {
      var ys = u.data && u.data[sidx] ? u.data[sidx] : [];
      var at = idx === null || idx === undefined ? latestIndex(ys) : idx;
      var v = at === null ? null : ys[at];
      if (sidx === 0) return { last: stamp(v), mean: "", max: "" };
      var st = (u.__stats && u.__stats[sidx]) || {};
      return { last: fmt(v), mean: fmt(st.mean), max: fmt(st.max) };
    };
  }

  // uPlot asks for the x range after new data with the data's first and last x (later,
  // in a microtask, so no flag around setData can tell), and after a drag with the
  // selection: the first is pinned to the view window, the second taken as asked.
  function fitsData(u, min, max) {
    var xs = u.data && u.data[0] ? u.data[0] : [];
    if (min === null || max === null || !xs.length) return true;
    return min === xs[0] && max === xs[xs.length - 1];
  }

  function hideKey(panel, label) { return panel.id + ":" + label; }

  function makeChart(panel, el, built) {
    var text = cssVar("--text");
    var grid = cssVar("--grid");
    var axis = { stroke: text, grid: { stroke: grid }, ticks: { stroke: grid } };
    var opts = {
      width: Math.max(200, el.clientWidth),
      height: chartHeight(),
      cursor: {
        drag: { x: true, y: false },
        // One crosshair across the panels; a legend click toggles only its own chart.
        sync: { key: "zai-dashboard", setSeries: false },
        // A double click goes back to live (below), not to uPlot's own reset.
        bind: { dblclick: function () { return null; } },
      },
      legend: { live: true },
      scales: {
        x: {
          time: true,
          // The axis is the range up to now (or the zoom), however little data there is;
          // a drag's window is taken as asked.
          range: function (u, min, max) { return fitsData(u, min, max) ? viewWindow() : [min, max]; },
        },
      },
      axes: [
        Object.assign({}, axis, { space: TIME_SPACE, incrs: TIME_INCRS, values: timeAxisValues }),
        Object.assign({}, axis, {
          size: 60,
          values: function (u, vals) { return vals.map(panel.axis); },
        }),
      ],
      series: [{ label: "time", values: legendValues(stamp) }].concat(
        built.series.map(function (s) {
          return {
            label: s.label,
            stroke: s.color,
            dash: s.dash || undefined,
            scale: s.def.scale || "y",
            spanGaps: false,
            show: !state.hidden.has(hideKey(panel, s.label)),
            fill: s.fill || undefined,
            width: s.width || 1.5,
            // A marker series is points only: one where an adjustment happened.
            paths: s.marker ? function () { return null; } : undefined,
            points: s.marker
              ? { show: true, size: 10, width: 2, stroke: s.color, fill: s.color }
              : { show: false },
            values: legendValues(s.def.fmt),
          };
        })
      ),
      hooks: {
        // The legend's corner names the time its "last" column stands for.
        setLegend: [function (u) {
          var corner = u.root.querySelector(".u-legend thead th");
          if (!corner) return;
          var xs = u.data && u.data[0] ? u.data[0] : [];
          var at = u.cursor.idx === null || u.cursor.idx === undefined ? xs.length - 1 : u.cursor.idx;
          corner.textContent = at >= 0 ? stamp(xs[at]) : "";
        }],
        setScale: [function (u, key) { if (key === "x") onScale(u); }],
        setSeries: [function (u, sidx, opts) {
          if (!sidx || !opts || opts.show === undefined) return;
          var k = hideKey(panel, u.series[sidx].label);
          if (opts.show) state.hidden.delete(k); else state.hidden.add(k);
          writeParams();
        }],
      },
    };
    if (panel.right) {
      opts.axes.push(Object.assign({}, axis, {
        side: 1,
        scale: panel.right,
        size: 50,
        grid: { show: false },
        values: function (u, vals) { return vals.map(panel.rightFmt || fmtNum); },
      }));
    }
    var colors = { outage: cssVar("--outage") };
    ADJUSTMENTS.forEach(function (a) { colors[a.kind] = cssVar(a.color); });
    // Before uPlot's first draw, which the hooks below take part in.
    opts.hooks.init = [function (u) { u.__colors = colors; u.__drawn = { outages: [], adjustments: [] }; }];
    opts.hooks.drawClear = [drawOutages];
    opts.hooks.draw = [drawAdjustments];
    opts.hooks.setCursor = [adjustmentTip];
    var plot = new uPlot(opts, built.data, el);
    plot.over.addEventListener("dblclick", backToLive);
    return plot;
  }

  // ------------------------------------------------------------------ zoom

  // uPlot changed a chart's x scale: by the range function (live, or the zoom kept), or by
  // a drag.  A drag pauses the live view and zooms every chart to the same window.
  function onScale(u) {
    var want = viewWindow();
    var min = u.scales.x.min;
    var max = u.scales.x.max;
    if (min === null || max === null) return;
    if (Math.abs(min - want[0]) < 0.5 && Math.abs(max - want[1]) < 0.5) return;
    state.zoom = [min, max];
    Object.keys(charts).forEach(function (id) {
      var other = charts[id].plot;
      if (other !== u) other.setScale("x", { min: min, max: max });
    });
    syncLive();
  }

  function backToLive() {
    if (!state.zoom) return;
    state.zoom = null;
    syncLive();
    renderAll();
  }

  function syncLive() {
    var box = document.getElementById("live-state");
    box.hidden = !state.zoom;
    box.setAttribute("data-paused", state.zoom ? "true" : "false");
    if (state.zoom) {
      document.getElementById("live-text").textContent =
        "Paused on " + clock(new Date(state.zoom[0] * 1000), true) + "–" + clock(new Date(state.zoom[1] * 1000), true);
    }
  }

  // While live, the axis keeps running to now even when no data arrives (an outage).
  function followNow() {
    if (state.zoom) return;
    // An outage going on now grows with the clock, not with data.
    state.outages = computeOutages();
    var w = viewWindow();
    Object.keys(charts).forEach(function (id) { charts[id].plot.setScale("x", { min: w[0], max: w[1] }); });
  }

  function panelNote(root) {
    var note = root.querySelector(".panel-note");
    if (!note) {
      note = document.createElement("div");
      note.className = "panel-note";
      root.insertBefore(note, root.querySelector(".skeleton"));
    }
    return note;
  }

  function showHistoryError(root) {
    var errorEl = root.querySelector(".panel-error");
    errorEl.textContent = "";
    var msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = "History could not be loaded: " + state.historyError + ". ";
    var retry = document.createElement("button");
    retry.type = "button";
    retry.className = "retry";
    retry.textContent = "Retry";
    retry.addEventListener("click", function () {
      retry.disabled = true;
      msg.textContent = "Retrying…";
      backfill();
    });
    errorEl.appendChild(msg);
    errorEl.appendChild(retry);
    errorEl.hidden = false;
    root.querySelector(".skeleton").hidden = true;
  }

  function renderPanel(panel) {
    var root = panelEl(panel.id);
    var errorEl = root.querySelector(".panel-error");
    try {
      if (state.historyError) showHistoryError(root);
      if (!state.loaded) return;
      var chartEl = root.querySelector(".chart");
      var built = panel.build ? panel.build() : buildData(panel);
      var signature = built.series.map(function (s) { return s.label; }).join("\u0000");
      var current = charts[panel.id];
      var stats = seriesStats(built.data);
      if (current && current.signature === signature) {
        // A zoom pauses the live view: the data stays as it was until "back to live".
        if (!state.zoom) {
          current.plot.__stats = stats;
              current.plot.setData(built.data);
        }
      } else {
        if (current) current.plot.destroy();
        var plot = makeChart(panel, chartEl, built);
        plot.__stats = stats;
        plot.setData(built.data);
        charts[panel.id] = { plot: plot, signature: signature };
      }
      root.querySelector(".skeleton").hidden = true;
      if (!state.historyError) errorEl.hidden = true;
      var empty = built.data[0].length === 0;
      var note = panelNote(root);
      note.textContent = empty
        ? "No data stored for " + selectedVariants().join(" or ") + " in the last " + state.range +
          ": nothing was scraped yet (are the proxies up?)."
        : "";
      note.hidden = !empty;
      root.setAttribute("data-empty", empty ? "true" : "false");
      dash.panels[panel.id] = {
        points: built.data[0].length,
        gaps: built.gaps,
        series: built.series.map(function (s, i) {
          var ys = built.data[i + 1];
          var nonNull = 0;
          for (var k = 0; k < ys.length; k++) if (ys[k] !== null && ys[k] !== undefined) nonNull++;
          return { label: s.label, variant: s.variant, color: s.color, length: ys.length, nonNull: nonNull };
        }),
      };
      if (panel.id === "tokens") { renderTokenStrip(); renderTokenModels(); }
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
      windowRows(v).forEach(function (s) {
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

  // What the tokens are spent on: per variant and model the window's mean tok/s, and the
  // variant's cache-hit ratio (cache reads over all the input the upstream saw).
  function renderTokenModels() {
    var body = document.querySelector("#token-models tbody");
    body.textContent = "";
    dash.tokenModels = [];
    selectedVariants().forEach(function (v) {
      var secs = 0, byModel = {}, input = 0, cached = 0;
      windowRows(v).forEach(function (s) {
        if (s.stale || !(s.interval_s > 0)) return;
        secs += s.interval_s;
        var m = s.token_rates_by_model || {};
        Object.keys(m).forEach(function (k) { byModel[k] = (byModel[k] || 0) + m[k] * s.interval_s; });
        input += (s.tokens_in || 0) + (s.tokens_cache_read || 0) + (s.tokens_cache_write || 0);
        cached += s.tokens_cache_read || 0;
      });
      var hit = input > 0 ? 100 * cached / input : null;
      var models = Object.keys(byModel).sort(function (a, b) { return byModel[b] - byModel[a]; });
      if (!models.length) models = ["—"];
      models.forEach(function (model, i) {
        var rate = secs > 0 && byModel[model] !== undefined ? byModel[model] / secs : null;
        var tr = document.createElement("tr");
        tr.setAttribute("data-variant", v);
        tr.setAttribute("data-model", model);
        cell(tr, i === 0 ? v : "");
        cell(tr, model);
        cell(tr, withUnit("tok/s")(rate), "num");
        cell(tr, i === 0 ? fmtPct(hit) + " cache hits" : "", "num");
        body.appendChild(tr);
        dash.tokenModels.push({ variant: v, model: model, rate: rate, cacheHitPct: hit });
      });
    });
  }

  function renderErrorTypes() {
    var list = document.getElementById("error-types");
    list.textContent = "";
    selectedVariants().forEach(function (v) {
      var rows = windowRows(v);
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

  // ------------------------------------------------------------------ limiter headroom

  // One upstream limit for both variants, whichever the toggle shows: the allowed rates
  // stacked (production, then canary on top) against the combined request rate, the
  // learned ceiling (the last one known: the API sends null while the limiter probes),
  // the 429 share on the right axis, and each adjustment as a marker.
  var NEUTRAL = { light: "#374151", dark: "#d1d5db" };
  var SHARE = { light: "#7c3aed", dark: "#c4b5fd" };
  var ADJUSTMENTS = [
    { kind: "increase", field: "rate_limit_adj_increase", color: "--ok",
      reason: "reason not recorded; an increase follows a window without 429s" },
    { kind: "decrease", field: "rate_limit_adj_decrease", color: "--bad",
      reason: "reason not recorded; a decrease follows 429s from the upstream" },
    { kind: "probe", field: "rate_limit_adj_probe", color: "--warn",
      reason: "reason not recorded; a probe tries a rate above the learned ceiling" },
  ];

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }

  function buildLimiter() {
    var lists = { production: [], canary: [] };
    var ceilings = {};
    var start = windowStart();
    Object.keys(lists).forEach(function (v) {
      (state.data[v] || []).forEach(function (s) {
        // The last known ceiling, carried from before the window too.
        if (num(s.rate_limit_ceiling) !== null) ceilings[v] = s.rate_limit_ceiling;
        if (s.ts < start) return;
        lists[v].push({ ts: s.ts, s: s, ceiling: ceilings[v] === undefined ? null : ceilings[v] });
      });
    });
    // The variants' rows of one scrape tick are a few milliseconds apart: pair the rows
    // closer than half an interval, so each point of the stack has both layers.
    var rows = [];
    var P = lists.production, C = lists.canary, i = 0, j = 0;
    var near = state.scrapeInterval / 2;
    while (i < P.length || j < C.length) {
      var p = P[i], c = C[j];
      if (p && c && Math.abs(p.ts - c.ts) < near) {
        rows.push({ ts: Math.max(p.ts, c.ts), v: { production: p, canary: c } });
        i++; j++;
      } else if (p && (!c || p.ts < c.ts)) {
        rows.push({ ts: p.ts, v: { production: p } });
        i++;
      } else {
        rows.push({ ts: c.ts, v: { canary: c } });
        j++;
      }
    }
    // The newest tick may have reached the page for one variant only: wait for the other
    // rather than draw a stack that is missing a layer.
    var tail = rows[rows.length - 1];
    var before = rows[rows.length - 2];
    if (tail && before && Object.keys(before.v).some(function (v) { return !tail.v[v]; })) rows.pop();
    var limit = gapLimit(rows);
    var cols = { ts: [], prod: [], both: [], req: [], ceiling: [], share: [],
      increase: [], decrease: [], probe: [] };
    function push(ts, values) {
      cols.ts.push(ts);
      Object.keys(values).forEach(function (k) { cols[k].push(values[k]); });
    }
    var empty = { prod: null, both: null, req: null, ceiling: null, share: null,
      increase: null, decrease: null, probe: null };
    rows.forEach(function (row, i) {
      if (i > 0 && row.ts - rows[i - 1].ts > limit) push((row.ts + rows[i - 1].ts) / 2, empty);
      var p = row.v.production, c = row.v.canary;
      var pr = p ? num(p.s.rate_limit_rps) : null;
      var cr = c ? num(c.s.rate_limit_rps) : null;
      var sum = function (a, b) { return a === null && b === null ? null : (a || 0) + (b || 0); };
      var reqs = sum(p ? num(p.s.req_rate) : null, c ? num(c.s.req_rate) : null);
      var attempts = 0, r429 = 0;
      [p, c].forEach(function (x) {
        if (!x) return;
        attempts += (num(x.s.req_rate) || 0) + (num((x.s.retry_rates || {}).retry) || 0);
        r429 += num((x.s.upstream_error_rates || {})["429"]) || 0;
      });
      var allowed = sum(pr, cr);
      var values = {
        prod: pr,
        both: allowed,
        req: reqs,
        ceiling: sum(p ? p.ceiling : null, c ? c.ceiling : null),
        share: attempts > 0 ? 100 * r429 / attempts : null,
        increase: null, decrease: null, probe: null,
      };
      ADJUSTMENTS.forEach(function (a) {
        [p, c].forEach(function (x) { if (x && num(x.s[a.field]) > 0) values[a.kind] = allowed; });
      });
      push(row.ts, values);
    });
    var fam = FAMILIES[state.theme];
    var rate = withUnit("req/s");
    var defs = [
      { label: "canary allowed (stacked)", key: "both", color: fam.canary[0], fill: fam.canary[0] + "40" },
      { label: "production allowed", key: "prod", color: fam.production[0], fill: fam.production[0] + "55" },
      { label: "requests (both)", key: "req", color: NEUTRAL[state.theme], width: 2 },
      { label: "ceiling (last known)", key: "ceiling", color: cssVar("--bad"), dash: [8, 4] },
      { label: "429 share", key: "share", color: SHARE[state.theme], scale: "share", fmt: fmtPct },
    ];
    ADJUSTMENTS.forEach(function (a) {
      defs.push({ label: a.kind, key: a.kind, color: cssVar(a.color), marker: true });
    });
    return {
      data: [cols.ts].concat(defs.map(function (d) { return cols[d.key]; })),
      gaps: [],
      series: defs.map(function (d) {
        return {
          label: d.label,
          variant: "both",
          color: d.color,
          dash: d.dash || null,
          fill: d.fill,
          width: d.width,
          marker: d.marker,
          def: { fmt: d.fmt || rate, scale: d.scale },
        };
      }),
    };
  }

  // ------------------------------------------------------------------ outages and adjustments

  // Stretches without a row from any variant: the dashboard (or its store) was down, or
  // every proxy was.  A stretch one variant alone lacks is only a gap in its lines.  The
  // last one runs to now while nothing arrives.
  function computeOutages() {
    var all = [];
    var limit = 0;
    Object.keys(state.data).forEach(function (v) {
      var rows = state.data[v] || [];
      if (!rows.length) return;
      limit = Math.max(limit, gapLimit(rows));
      rows.forEach(function (s) { all.push(s.ts); });
    });
    all.sort(function (a, b) { return a - b; });
    var out = [];
    for (var i = 1; i < all.length; i++) if (all[i] - all[i - 1] > limit) out.push([all[i - 1], all[i]]);
    var now = Date.now() / 1000;
    // Twice the limit for the open end: a live row may be a render late.
    if (all.length && now - all[all.length - 1] > 2 * limit) out.push([all[all.length - 1], now]);
    return out;
  }

  // Every limiter adjustment in the data, with the rate before (the variant's previous
  // row) and after.  The proxies count adjustments by direction only: there is no reason
  // field to show, so the tooltip says what the direction means, and says it is inferred.
  function computeAdjustments() {
    var out = [];
    Object.keys(state.data).forEach(function (v) {
      var before = null;
      (state.data[v] || []).forEach(function (s) {
        var rate = num(s.rate_limit_rps);
        ADJUSTMENTS.forEach(function (a) {
          if (num(s[a.field]) > 0) out.push({ ts: s.ts, variant: v, kind: a.kind, before: before, after: rate });
        });
        if (rate !== null) before = rate;
      });
    });
    return out.sort(function (a, b) { return a.ts - b.ts; });
  }

  function adjustmentKind(kind) {
    return ADJUSTMENTS.filter(function (a) { return a.kind === kind; })[0];
  }

  function adjustmentText(a) {
    return a.variant + ": " + a.kind + " " + fmtNum(a.before) + " → " + fmtNum(a.after) +
      " req/s (" + adjustmentKind(a.kind).reason + ")";
  }

  // Drawn under the series (uPlot's drawClear hook): each outage a shaded band.
  function drawOutages(u) {
    var b = u.bbox;
    var drawn = [];
    u.ctx.save();
    u.ctx.fillStyle = u.__colors.outage;
    state.outages.forEach(function (o) {
      var x0 = Math.max(b.left, u.valToPos(o[0], "x", true));
      var x1 = Math.min(b.left + b.width, u.valToPos(o[1], "x", true));
      if (x1 <= x0) return;
      u.ctx.fillRect(x0, b.top, x1 - x0, b.height);
      drawn.push(o);
    });
    u.ctx.restore();
    u.__drawn.outages = drawn;
  }

  // Drawn over the series (uPlot's draw hook): each adjustment a thin line across the
  // plot and a shape at its top, told apart by shape as well as colour: ▲ increase,
  // ▼ decrease, ◆ probe.
  function drawAdjustments(u) {
    var b = u.bbox;
    var ctx = u.ctx;
    var r = 5 * uPlot.pxRatio;
    var drawn = [];
    ctx.save();
    state.adjustments.forEach(function (a) {
      var x = u.valToPos(a.ts, "x", true);
      if (x < b.left || x > b.left + b.width) return;
      var color = u.__colors[a.kind];
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = uPlot.pxRatio;
      ctx.setLineDash([4 * uPlot.pxRatio, 3 * uPlot.pxRatio]);
      ctx.beginPath();
      ctx.moveTo(x, b.top);
      ctx.lineTo(x, b.top + b.height);
      ctx.stroke();
      ctx.setLineDash([]);
      var y = b.top + r;
      ctx.beginPath();
      if (a.kind === "increase") {
        ctx.moveTo(x, y - r); ctx.lineTo(x + r, y + r); ctx.lineTo(x - r, y + r);
      } else if (a.kind === "decrease") {
        ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y - r); ctx.lineTo(x, y + r);
      } else {
        ctx.moveTo(x, y - r); ctx.lineTo(x + r, y); ctx.lineTo(x, y + r); ctx.lineTo(x - r, y);
      }
      ctx.closePath();
      ctx.fill();
      drawn.push({ ts: a.ts, kind: a.kind, variant: a.variant, x: x / uPlot.pxRatio });
    });
    ctx.restore();
    u.__drawn.adjustments = drawn;
  }

  // The adjustments within a few pixels of the pointer, in words, over the chart.  The
  // crosshair is synced, so every chart shows them at once.
  function adjustmentTip(u) {
    var tip = u.root.parentNode.parentNode.querySelector(".adj-tip");
    if (!tip) return;
    var left = u.cursor.left;
    var near = left === null || left === undefined || left < 0 ? [] : state.adjustments.filter(function (a) {
      return Math.abs(u.valToPos(a.ts, "x") - left) <= 6;
    });
    tip.textContent = near.map(adjustmentText).join("; ");
    tip.hidden = !near.length;
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
        try { renderLimiterInfo(); renderStatus(); } catch (err) { dash.errors.limiterInfo = String(err); }
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
      var item = document.createElement("span");
      item.className = "status-variant";
      item.id = "status-" + v;
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = v;
      item.appendChild(name);
      var pods = state.targets.filter(function (t) { return t && t.variant === v; });
      var up = pods.filter(function (t) { return t.up; }).length;
      var health = document.createElement("span");
      health.className = "metric scrape " + scrapeLevel(up, pods.length);
      health.setAttribute("data-metric", "scrape");
      health.textContent = pods.length ? up + "/" + pods.length + " scraped" : "no target";
      item.appendChild(health);
      var stale = document.createElement("span");
      stale.className = "stale-marker";
      stale.id = "stale-" + v;
      stale.textContent = "STALE";
      stale.hidden = !isStale(v);
      item.appendChild(stale);
      box.appendChild(item);
    });
    renderScrapeHealth();
  }

  // Every target up is fine; some down is a warning (the others still serve and are
  // seen); none up, or none known, is bad.
  function scrapeLevel(up, total) {
    if (!total || !up) return "bad";
    return up === total ? "ok" : "warn";
  }

  // The proxies' health as the dashboard's scrapes see it (/api/status), beside the
  // browser's own link to the dashboard.
  function renderScrapeHealth() {
    var el = document.getElementById("scrape-health");
    var total = state.targets.length;
    var up = state.targets.filter(function (t) { return t && t.up; }).length;
    el.setAttribute("data-up", String(up));
    el.setAttribute("data-total", String(total));
    var known = dash.statusPolls > 0 && state.conn === "connected";
    el.setAttribute("data-state", !known ? "unknown" : scrapeLevel(up, total));
    el.textContent = !known ? "unknown" : up + " of " + total + " targets up";
  }

  // ------------------------------------------------------------------ verdict strip

  // A variant's figures over the last `seconds`: rates weighted by the time each row
  // covers, error % and p95 by the requests each row saw (p95 so is an approximation, as
  // the store's one-minute rows are).
  function aggregate(v, seconds) {
    var since = Date.now() / 1000 - seconds;
    var secs = 0, reqs = 0, tok = 0, errW = 0, errReq = 0, p95W = 0, p95Req = 0;
    var conc = [], maxw = [], first = null;
    (state.data[v] || []).forEach(function (s) {
      if (s.ts < since || s.stale || !(s.interval_s > 0)) return;
      if (first === null) first = s.ts;
      var iv = s.interval_s;
      var n = (s.req_rate || 0) * iv;
      secs += iv;
      reqs += n;
      tok += ((s.token_rate_in || 0) + (s.token_rate_out || 0)) * iv;
      if (typeof s.error_rate_pct === "number" && n > 0) { errW += s.error_rate_pct * n; errReq += n; }
      if (typeof s.latency_p95_ms === "number" && n > 0) { p95W += s.latency_p95_ms * n; p95Req += n; }
      if (typeof s.concurrent === "number") conc.push(s.concurrent);
      if (typeof s.max_workers === "number") maxw.push(s.max_workers);
    });
    if (!secs) return null;
    var mean = function (xs) { return xs.length ? xs.reduce(function (a, b) { return a + b; }, 0) / xs.length : null; };
    var c = mean(conc), m = mean(maxw);
    return {
      since: first,
      req: reqs / secs,
      err: errReq ? errW / errReq : null,
      p95: p95Req ? p95W / p95Req : null,
      tok: tok / secs,
      concurrent: c,
      workers: m,
      util: c !== null && m ? c / m : null,
    };
  }

  function level(value, limits) {
    if (!limits || value === null || value === undefined) return "";
    if (limits.bad !== undefined && value >= limits.bad) return "bad";
    if (limits.warn !== undefined && value > limits.warn) return "warn";
    return "ok";
  }

  var TILES = [
    { metric: "req", name: "req/s", show: function (a) { return fmtNum(a.req); } },
    { metric: "errors", name: "errors", show: function (a) { return fmtPct(a.err); },
      level: function (a, t) { return level(a.err, t.error_pct); } },
    { metric: "p95", name: "p95", show: function (a) { return fmtMs(a.p95); },
      level: function (a, t) { return level(a.p95, t.p95_ms); } },
    { metric: "tokens", name: "tok/s", show: function (a) { return fmtNum(a.tok); } },
    { metric: "workers", name: "workers busy", show: function (a) { return fmtNum(a.concurrent) + "/" + fmtNum(a.workers); },
      level: function (a, t) { return level(a.util, t.utilization); } },
  ];

  function renderVerdict() {
    var box = document.getElementById("verdict-variants");
    box.textContent = "";
    selectedVariants().forEach(function (v) {
      var row = document.createElement("div");
      row.className = "verdict-variant";
      row.id = "verdict-" + v;
      row.setAttribute("data-variant", v);
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = v;
      row.appendChild(name);
      var windows = { "1m": aggregate(v, 60), "5m": aggregate(v, 300) };
      TILES.forEach(function (tile) {
        var el = document.createElement("div");
        el.className = "tile";
        el.setAttribute("data-metric", tile.metric);
        var label = document.createElement("span");
        label.className = "tile-name";
        label.textContent = tile.name;
        el.appendChild(label);
        var worst = "";
        ["1m", "5m"].forEach(function (w) {
          var a = windows[w];
          var fig = document.createElement("span");
          fig.className = "fig";
          fig.setAttribute("data-window", w);
          fig.textContent = (a ? tile.show(a) : "—") + " " + w;
          var lv = a && tile.level && state.thresholds ? tile.level(a, state.thresholds) : "";
          fig.setAttribute("data-level", lv);
          // The tile takes the 5 min figure's colour: the alert rules' own window.
          if (w === "5m") worst = lv;
          el.appendChild(fig);
        });
        el.setAttribute("data-level", worst);
        row.appendChild(el);
      });
      box.appendChild(row);
    });
    renderCompare();
  }

  function renderCompare() {
    var el = document.getElementById("compare");
    var prod = aggregate("production", COMPARE_S);
    var can = aggregate("canary", COMPARE_S);
    if (!prod || !can) {
      el.textContent = "Canary vs production: not enough data for both variants yet.";
      el.setAttribute("data-level", "");
      return;
    }
    var since = Math.max(prod.since, can.since);
    var minutes = Math.max(1, Math.round((Date.now() / 1000 - since) / 60));
    var parts = [];
    var bad = false;
    var t = state.thresholds || {};
    if (prod.p95 && can.p95 !== null) {
      var change = (can.p95 / prod.p95 - 1) * 100;
      parts.push("p95 " + (change >= 0 ? "+" : "−") + trim(Math.abs(change)) + " %");
      if (t.canary_p95 && can.p95 > t.canary_p95.ratio * prod.p95) bad = true;
    } else {
      parts.push("p95 —");
    }
    if (prod.err !== null && can.err !== null) {
      parts.push(prod.err > 0
        ? "errors " + trim(can.err / prod.err) + "×"
        : "errors " + fmtPct(can.err) + " vs " + fmtPct(prod.err));
      if (t.canary_errors && can.err > t.canary_errors.ratio * (prod.err + t.canary_errors.floor_pct)) bad = true;
    } else {
      parts.push("errors —");
    }
    el.textContent = "Canary vs production: " + parts.join(", ") + ", last " + minutes + " min" +
      (bad ? " (worse than the canary alert rules allow)" : "");
    el.setAttribute("data-level", state.thresholds ? (bad ? "bad" : "ok") : "");
  }

  // "data since 3:19pm" when the history is shorter than the range.
  function renderRangeNote() {
    var el = document.getElementById("range-note");
    var first = null;
    selectedVariants().forEach(function (v) {
      var rows = windowRows(v);
      if (rows.length && (first === null || rows[0].ts < first)) first = rows[0].ts;
    });
    var start = windowStart();
    var short = first !== null && first - start > Math.max(10, 3 * state.scrapeInterval);
    el.setAttribute("data-since", short ? String(first) : "");
    el.textContent = first === null
      ? "no data in the last " + state.range
      : short ? "data since " + clock(new Date(first * 1000), false) + " (range " + state.range + ")"
        : "last " + state.range;
  }

  function loadConfig() {
    fetch("/api/config", { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("config request failed: HTTP " + r.status);
        return r.json();
      })
      .then(function (body) {
        state.thresholds = body.thresholds || null;
        scheduleRender();
      })
      .catch(function () { setTimeout(loadConfig, 5000); });
  }

  // ------------------------------------------------------------------ rendering

  var renderQueued = false;

  function renderAll() {
    renderQueued = false;
    state.outages = computeOutages();
    state.adjustments = computeAdjustments();
    PANELS.forEach(renderPanel);
    try { renderStatus(); } catch (err) { dash.errors.status = String(err); }
    try { renderVerdict(); renderRangeNote(); } catch (err) { dash.errors.verdict = String(err); }
    try { renderLimiterInfo(); } catch (err) { dash.errors.limiterInfo = String(err); }
  }

  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    window.requestAnimationFrame(renderAll);
  }

  // A phone gets lower charts: six panels of two variants must stay a short scroll.
  var PHONE = "(max-width: 600px)";

  function chartHeight() {
    return window.matchMedia && window.matchMedia(PHONE).matches ? 140 : 240;
  }

  function resizeCharts() {
    // Deferred, and only on a width change, so resizing never feeds back into the observer.
    window.requestAnimationFrame(function () {
      Object.keys(charts).forEach(function (id) {
        var el = panelEl(id).querySelector(".chart");
        var width = Math.max(200, el.clientWidth);
        var height = chartHeight();
        var plot = charts[id].plot;
        if (width !== plot.width || height !== plot.height) plot.setSize({ width: width, height: height });
      });
    });
  }

  // ------------------------------------------------------------------ live connection

  function setConn(name) {
    state.conn = name;
    var el = document.getElementById("conn-state");
    el.textContent = name;
    el.setAttribute("data-state", name);
    renderScrapeHealth();
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
    setInterval(function () {
      try { renderStatus(); } catch (err) { dash.errors.status = String(err); }
      followNow();
    }, 1000);
    document.getElementById("back-to-live").addEventListener("click", backToLive);
    // On a phone the limiter's pods table starts folded: one tap away, not a screen long.
    if (window.matchMedia && window.matchMedia(PHONE).matches) document.getElementById("limiter-details").open = false;
    renderStatus();
    loadConfig();
    connect();
  }

  dash.format = { num: fmtNum, ms: fmtMs, pct: fmtPct };
  dash.render = renderAll;
  dash.level = level;

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
