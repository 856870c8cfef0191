// Tailor report charts: inline SVG drawn from the report JSON embedded in the page.
// No dependencies, no network: the page works offline. When every chart is drawn the <html>
// element gets data-charts="ok"; any error lands in data-chart-errors (read by the tests).
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
  var errors = [];

  function recordError(message) {
    errors.push(String(message));
    document.documentElement.setAttribute("data-chart-errors", errors.join(" | "));
  }
  window.addEventListener("error", function (event) { recordError(event.message); });

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function text(parent, x, y, content, attrs) {
    var node = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    node.textContent = content;
    return node;
  }

  function svg(container, width, height) {
    var root = el("svg", { viewBox: "0 0 " + width + " " + height, width: "100%", role: "img" });
    container.appendChild(root);
    return root;
  }

  var LABELS = { "~holdout": "holdout", "~global_holdout": "global holdout" };
  function armLabel(arm) { return LABELS[arm] || arm; }

  // Rate differences lie in [-1, 1]; early confidence sequences are wider and drawn clipped.
  function clip(iv) {
    return { estimate: iv.estimate, lower: Math.max(iv.lower, -1), upper: Math.min(iv.upper, 1) };
  }

  function finite(x) { return typeof x === "number" && isFinite(x); }

  function extent(values) {
    var good = values.filter(finite);
    if (!good.length) { return [0, 1]; }
    var lo = Math.min.apply(null, good), hi = Math.max.apply(null, good);
    if (lo === hi) { lo -= 1e-3; hi += 1e-3; }
    var pad = (hi - lo) * 0.08;
    return [lo - pad, hi + pad];
  }

  function scale(domain, range) {
    return function (v) {
      return range[0] + (v - domain[0]) / (domain[1] - domain[0]) * (range[1] - range[0]);
    };
  }

  function ticks(domain, count) {
    var step = (domain[1] - domain[0]) / count, out = [];
    for (var i = 0; i <= count; i++) { out.push(domain[0] + step * i); }
    return out;
  }

  function empty(container, message) {
    var p = document.createElement("p");
    p.className = "note";
    p.textContent = message;
    container.appendChild(p);
  }

  function dailyChart(container, report) {
    var series = report.daily || [];
    if (!series.length || !series[0].points.length) { empty(container, "No units yet."); return; }
    var W = 640, H = 260, L = 56, R = 110, T = 12, B = 32;
    var root = svg(container, W, H);
    var n = series[0].points.length;
    var all = [];
    series.forEach(function (s) { s.points.forEach(function (p) { all.push(p.rate); }); });
    var dom = extent(all);
    dom = [Math.max(dom[0], 0), Math.min(dom[1], 1)];  // rates: never below 0% or above 100%
    var y = scale(dom, [H - B, T]);
    var x = scale([0, Math.max(n - 1, 1)], [L, W - R]);
    ticks(dom, 4).forEach(function (v) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, root);
      text(root, L - 6, y(v) + 4, (v * 100).toFixed(2) + "%", { "text-anchor": "end", class: "tick" });
    });
    [0, n - 1].forEach(function (i) {
      text(root, x(i), H - 10, series[0].points[i].day, { "text-anchor": i ? "end" : "start", class: "tick" });
    });
    series.forEach(function (s, k) {
      var colour = COLOURS[k % COLOURS.length];
      var d = "";
      s.points.forEach(function (p, i) {
        if (!finite(p.rate)) { return; }
        d += (d ? " L " : "M ") + x(i).toFixed(1) + " " + y(p.rate).toFixed(1);
      });
      if (d) { el("path", { d: d, fill: "none", stroke: colour, "stroke-width": 2, class: "series" }, root); }
      if (n === 1 && finite(s.points[0].rate)) { el("circle", { cx: x(0), cy: y(s.points[0].rate), r: 4, fill: colour, class: "series" }, root); }
      text(root, W - R + 8, T + 14 + k * 16, armLabel(s.arm), { fill: colour, class: "legend" });
    });
  }

  function liftChart(container, report) {
    var rows = [];
    (report.metrics || []).forEach(function (m) {
      if (m.role === "secondary") { return; }
      m.comparisons.forEach(function (c) {
        if (c.measure !== "conversion_rate") { return; }
        rows.push({ label: c.variant + " · " + m.metric, fixed: clip(c.lift.absolute), seq: clip(c.sequential.absolute), direction: c.direction });
      });
    });
    if (!rows.length) { empty(container, "No comparisons yet."); return; }
    var W = 640, rowH = 26, L = 170, R = 24, T = 10, B = 30, H = T + B + rows.length * rowH;
    var root = svg(container, W, H);
    var values = [0];
    rows.forEach(function (r) { values.push(r.fixed.lower, r.fixed.upper, r.seq.lower, r.seq.upper); });
    var dom = extent(values);
    var x = scale(dom, [L, W - R]);
    ticks(dom, 4).forEach(function (v) {
      el("line", { x1: x(v), x2: x(v), y1: T, y2: H - B, class: "grid" }, root);
      text(root, x(v), H - 10, (v * 100).toFixed(2) + " pp", { "text-anchor": "middle", class: "tick" });
    });
    el("line", { x1: x(0), x2: x(0), y1: T, y2: H - B, class: "zero" }, root);
    rows.forEach(function (r, i) {
      var cy = T + rowH * i + rowH / 2;
      var colour = r.direction === "better" ? "#16a34a" : r.direction === "worse" ? "#dc2626" : "#4b5563";
      text(root, L - 8, cy + 4, r.label, { "text-anchor": "end", class: "label" });
      if (finite(r.seq.lower) && finite(r.seq.upper)) {
        el("line", { x1: x(r.seq.lower), x2: x(r.seq.upper), y1: cy, y2: cy, stroke: colour, "stroke-width": 1.5, class: "interval-seq" }, root);
      }
      if (finite(r.fixed.lower) && finite(r.fixed.upper)) {
        el("line", { x1: x(r.fixed.lower), x2: x(r.fixed.upper), y1: cy, y2: cy, stroke: colour, "stroke-width": 6, "stroke-opacity": 0.45, class: "interval-fixed" }, root);
      }
      if (finite(r.fixed.estimate)) { el("circle", { cx: x(r.fixed.estimate), cy: cy, r: 4, fill: colour, class: "estimate" }, root); }
    });
  }

  function segmentRows(report) {
    var rows = [];
    var uplift = (report.uplift && report.uplift.by_segment) || [];
    uplift.forEach(function (u) {
      rows.push({ label: u.segment + " (" + (u.holdout === "global" ? "global holdout" : "holdout") + ")", iv: u.rate_lift });
    });
    if (!rows.length && report.segments) {
      report.segments.rows.forEach(function (s) {
        s.comparisons.forEach(function (c) { rows.push({ label: s.segment + " · " + c.variant, iv: c.lift }); });
      });
    }
    return rows;
  }

  function segmentChart(container, report) {
    var rows = segmentRows(report);
    if (!rows.length) { empty(container, "No segment breakdown: add ?segment=<context attribute> (uplift needs a holdout)."); return; }
    var W = 640, rowH = 24, L = 170, R = 24, T = 10, B = 30, H = T + B + rows.length * rowH;
    var root = svg(container, W, H);
    var values = [0];
    rows.forEach(function (r) { values.push(r.iv.lower, r.iv.upper, r.iv.estimate); });
    var dom = extent(values);
    var x = scale(dom, [L, W - R]);
    ticks(dom, 4).forEach(function (v) {
      text(root, x(v), H - 10, (v * 100).toFixed(2) + " pp", { "text-anchor": "middle", class: "tick" });
    });
    el("line", { x1: x(0), x2: x(0), y1: T, y2: H - B, class: "zero" }, root);
    rows.forEach(function (r, i) {
      var cy = T + rowH * i + rowH / 2;
      text(root, L - 8, cy + 4, r.label, { "text-anchor": "end", class: "label" });
      if (!finite(r.iv.estimate)) { return; }
      var x0 = x(Math.min(0, r.iv.estimate)), x1 = x(Math.max(0, r.iv.estimate));
      el("rect", { x: x0, y: cy - 7, width: Math.max(x1 - x0, 1), height: 14, fill: r.iv.estimate >= 0 ? "#93c5fd" : "#fca5a5", class: "bar" }, root);
      if (finite(r.iv.lower) && finite(r.iv.upper)) {
        el("line", { x1: x(r.iv.lower), x2: x(r.iv.upper), y1: cy, y2: cy, stroke: "#1f2937", "stroke-width": 1.5, class: "interval" }, root);
      }
    });
  }

  // An adaptive policy's value over time: the cumulative gain over its baseline per bucket,
  // the interval as a band around the estimate, 0 dashed.
  function valueChart(container, report) {
    var a = report.adaptive;
    var points = (a && a.value_over_time) || [];
    if (!points.length) { empty(container, "No value to show yet (needs a holdout or logged decisions of the control)."); return; }
    var rate = a.source !== "off_policy";
    var k = rate ? 100 : 1;
    var ivs = points.map(function (p) { return rate ? clip(p.gain) : p.gain; });
    var values = [0];
    ivs.forEach(function (iv) { values.push(iv.lower * k, iv.upper * k, iv.estimate * k); });
    var W = 640, H = 240, L = 64, R = 20, T = 12, B = 32;
    var root = svg(container, W, H);
    var dom = extent(values);
    var n = points.length;
    var x = function (i) { return n === 1 ? (L + W - R) / 2 : L + i * (W - L - R) / (n - 1); };
    var y = scale(dom, [H - B, T]);
    ticks(dom, 4).forEach(function (v) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, root);
      text(root, L - 6, y(v) + 4, v.toFixed(rate ? 1 : 3) + (rate ? " pp" : ""), { "text-anchor": "end", class: "tick" });
    });
    el("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "zero" }, root);
    var upper = ivs.map(function (iv, i) { return x(i) + " " + y(iv.upper * k); });
    var lower = ivs.map(function (iv, i) { return x(i) + " " + y(iv.lower * k); }).reverse();
    el("path", { d: "M " + upper.concat(lower).join(" L ") + " Z", class: "band", fill: COLOURS[0], "fill-opacity": "0.15" }, root);
    var line = ivs.map(function (iv, i) { return x(i) + " " + y(iv.estimate * k); });
    el("path", { d: "M " + line.join(" L "), fill: "none", stroke: COLOURS[0], "stroke-width": 2, class: "gain" }, root);
    ivs.forEach(function (iv, i) { el("circle", { cx: x(i), cy: y(iv.estimate * k), r: 2.5, fill: COLOURS[0], class: "point" }, root); });
    [0, n - 1].forEach(function (i) {
      text(root, x(i), H - 10, points[i].start.replace("T", " ").replace(":00Z", ""), { "text-anchor": i ? "end" : "start", class: "tick" });
    });
  }

  // An adaptive policy's allocation: each arm's share of the decisions per time bucket, stacked.
  function allocationChart(container, report) {
    var a = report.adaptive;
    if (!a || !a.allocation.length) { empty(container, "No logged decisions yet."); return; }
    var arms = a.arms.map(function (x) { return x.arm; });
    var W = 640, H = 240, L = 56, R = 110, T = 12, B = 32;
    var root = svg(container, W, H);
    var n = a.allocation.length;
    var bw = (W - L - R) / n;
    var y = scale([0, 1], [H - B, T]);
    [0, 0.25, 0.5, 0.75, 1].forEach(function (v) {
      el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, root);
      text(root, L - 6, y(v) + 4, (v * 100).toFixed(0) + "%", { "text-anchor": "end", class: "tick" });
    });
    a.allocation.forEach(function (b, i) {
      var acc = 0;
      b.shares.forEach(function (share, k) {
        if (!finite(share) || share <= 0) { return; }
        el("rect", { x: L + i * bw, y: y(acc + share), width: Math.max(bw - 1, 1), height: y(acc) - y(acc + share), fill: COLOURS[k % COLOURS.length], class: "share" }, root);
        acc += share;
      });
    });
    [0, n - 1].forEach(function (i) {
      text(root, L + (i + (i ? 1 : 0)) * bw, H - 10, a.allocation[i].start.replace("T", " ").replace(":00Z", ""), { "text-anchor": i ? "end" : "start", class: "tick" });
    });
    arms.forEach(function (arm, k) {
      text(root, W - R + 8, T + 14 + k * 16, arm, { fill: COLOURS[k % COLOURS.length], class: "legend" });
    });
  }

  function draw() {
    var node = document.getElementById("report-data");
    if (!node) { recordError("report data missing"); return; }
    var report = JSON.parse(node.textContent);
    var charts = [["chart-daily", dailyChart], ["chart-lift", liftChart], ["chart-segments", segmentChart]];
    if (report.adaptive) { charts.push(["chart-value", valueChart], ["chart-allocation", allocationChart]); }
    var drawn = 0;
    charts.forEach(function (c) {
      var container = document.getElementById(c[0]);
      if (!container) { recordError("missing #" + c[0]); return; }
      try { c[1](container, report); drawn++; } catch (err) { recordError(c[0] + ": " + err.message); }
    });
    document.documentElement.setAttribute("data-charts", drawn === charts.length && !errors.length ? "ok" : "failed");
    // What a reader at this window width sees: the page's width against the window's (a wider
    // page means something is cut off or needs sideways scrolling of the whole page).
    document.documentElement.setAttribute("data-page-width", String(document.documentElement.scrollWidth));
    document.documentElement.setAttribute("data-window-width", String(window.innerWidth));
    var cut = Array.prototype.filter.call(document.querySelectorAll("div.scroll"), function (d) { return d.scrollWidth > d.clientWidth + 1; });
    document.documentElement.setAttribute("data-wide-tables", String(cut.length));
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
})();
