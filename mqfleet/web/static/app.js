/* mqfleet dashboard: live updates over server-sent events, charts with plotly.js.
   Text from the fleet is only ever set with textContent; the parts a page swaps in are the server's own
   autoescaped HTML, parsed inert (DOMParser runs no script) and allowed no inline script by the page's CSP. */
"use strict";
(function () {
  const main = document.getElementById("main");
  const liveState = document.getElementById("live-state");

  function say(text) { if (liveState) liveState.textContent = text; }

  // --- charts -------------------------------------------------------------------------------------------
  const charts = {};  // metric -> chart element (job page)

  function readJson(id) {
    const el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent || "null"); } catch (e) { return null; }
  }

  function plot(container, name, trace, layoutExtra) {
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.metric = name;
    container.appendChild(div);
    const layout = Object.assign({
      title: { text: name, font: { size: 13 } }, margin: { l: 48, r: 12, t: 32, b: 36 },
      autosize: true, showlegend: false, paper_bgcolor: "#fff", plot_bgcolor: "#fff",
    }, layoutExtra || {});
    window.Plotly.newPlot(div, [trace], layout, { displayModeBar: false, responsive: true, staticPlot: false });
    return div;
  }

  function drawProgress() {
    const box = document.getElementById("progress-charts");
    const series = readJson("progress-data");
    if (!box || !series || !window.Plotly) return;
    const names = Object.keys(series);
    if (!names.length) return;
    box.replaceChildren();
    for (const name of names) {
      const points = series[name];
      charts[name] = plot(box, name, { x: points.map(p => p[0]), y: points.map(p => p[1]), mode: "lines+markers",
        type: "scatter", line: { width: 2 }, marker: { size: 4 } }, { xaxis: { title: { text: "epoch" } } });
    }
  }

  function extendProgress(progress) {
    const box = document.getElementById("progress-charts");
    if (!box || !progress || !window.Plotly) return;
    const epoch = typeof progress.epoch === "number" ? progress.epoch : null;
    const values = {};
    for (const key of ["loss", "progress"]) if (typeof progress[key] === "number") values[key] = progress[key];
    if (progress.metrics && typeof progress.metrics === "object")
      for (const [k, v] of Object.entries(progress.metrics)) if (typeof v === "number") values[k.replace(/[^A-Za-z0-9_.:/ +=,()\[\]-]/g, "?").slice(0, 64)] = v;
    const none = document.getElementById("no-progress");
    if (none && Object.keys(values).length) none.remove();
    for (const [name, y] of Object.entries(values)) {
      const chart = charts[name];
      if (chart) {
        const xs = chart.data[0].x;
        const x = epoch !== null ? epoch : xs.length;
        if (xs.length && xs[xs.length - 1] === x && chart.data[0].y[xs.length - 1] === y) continue;
        window.Plotly.extendTraces(chart, { x: [[x]], y: [[y]] }, [0], 5000);
      } else {
        charts[name] = plot(box, name, { x: [epoch !== null ? epoch : 0], y: [y], mode: "lines+markers", type: "scatter" },
          { xaxis: { title: { text: "epoch" } } });
      }
    }
  }

  function drawCompare() {
    const box = document.getElementById("compare-charts");
    const series = readJson("compare-data");
    if (!box || !series || !window.Plotly) return;
    box.replaceChildren();
    for (const [name, pairs] of Object.entries(series))
      plot(box, name, { x: pairs.map(p => p[0]), y: pairs.map(p => p[1]), type: "bar" }, { xaxis: { automargin: true } });
  }

  // --- live parts ---------------------------------------------------------------------------------------
  let refreshing = false, again = false;
  async function refreshPart() {
    const part = document.getElementById("part");
    if (!part || !part.dataset.part) return;
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      const response = await fetch(part.dataset.part, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("part");
      if (fresh) {
        part.replaceWith(document.importNode(fresh, true));
        drawCompare();
      }
    } catch (e) { /* the next change tries again */ }
    finally { refreshing = false; if (again) { again = false; refreshPart(); } }
  }

  function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }
  function percent(progress) {
    const p = progress && typeof progress.progress === "number" ? progress.progress : null;
    return p === null ? "-" : Math.round(Math.max(0, Math.min(1, p)) * 100) + "%";
  }
  function setStatus(el, status) {
    if (!el) return;
    setText(el, status);
    el.className = "badge status " + String(status).replace(/[^a-z]/g, "");
  }

  function onJobState(row) {
    const jobRow = document.querySelector('tr[data-job="' + CSS.escape(String(row.id)) + '"]');
    if (jobRow) {
      setStatus(jobRow.querySelector('[data-field="status"]'), row.status);
      setText(jobRow.querySelector('[data-field="host"]'), row.host || "-");
      setText(jobRow.querySelector('[data-field="progress"]'), row.status === "completed" ? "100%" : percent(row.progress));
    }
    const part = document.getElementById("part");
    if (document.getElementById("job-status") && part) {
      setText(document.getElementById("job-progress"), percent(row.progress));
      setText(document.getElementById("job-host"), row.host || "-");
      extendProgress(row.progress);
      if (part.dataset.status !== row.status) refreshPart();
    }
  }

  function onLines(batch) {
    const out = document.getElementById("output");
    if (!out || !Array.isArray(batch.lines)) return;
    if (out.dataset.attempt && String(batch.attempt) !== out.dataset.attempt) {
      out.replaceChildren();
      out.dataset.attempt = String(batch.attempt);
    }
    const follow = document.getElementById("follow");
    for (const line of batch.lines) {
      const span = document.createElement("span");
      span.className = "line";
      span.textContent = String(line);
      out.appendChild(span);
      out.appendChild(document.createTextNode("\n"));
    }
    while (out.childNodes.length > 4000) out.removeChild(out.firstChild);
    if (!follow || follow.checked) out.scrollTop = out.scrollHeight;
  }

  function connect() {
    const url = main && main.dataset.live;
    if (!url || !window.EventSource) return;
    const source = new EventSource(url);
    let opened = false;
    source.addEventListener("ready", () => { say("live"); if (opened) refreshPart(); opened = true; });
    source.addEventListener("changed", refreshPart);
    source.addEventListener("resync", refreshPart);
    source.addEventListener("job_state", (e) => { try { onJobState(JSON.parse(e.data)); } catch (err) { /* skip */ } });
    source.addEventListener("lines", (e) => { try { onLines(JSON.parse(e.data)); } catch (err) { /* skip */ } });
    source.onerror = () => say(source.readyState === EventSource.CLOSED ? "not live (reload to retry)" : "reconnecting…");
    window.addEventListener("pagehide", () => source.close());
  }

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) e.preventDefault();
  });

  function start() {
    drawProgress();
    drawCompare();
    const out = document.getElementById("output");
    if (out) out.scrollTop = out.scrollHeight;
    connect();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
