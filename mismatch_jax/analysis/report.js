// The interactive part of a sweep's report.html (mismatch_jax/analysis/report.py writes the page):
// the Fig. 3 scatters from the JSON in #report-data, hover text per model, and on a click (or a
// model id typed in the box) the model's row and its reward / NLL curve over evaluated epochs.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const models = data.models;
  const ids = models.values.model_id;
  const position = new Map(ids.map((id, k) => [id, k]));
  const panels = data.panels.panels;

  function hasWebGL() {
    try {
      const canvas = document.createElement("canvas");
      return !!(canvas.getContext("webgl") || canvas.getContext("experimental-webgl"));
    } catch (e) {
      return false;
    }
  }
  const traceType = data.webgl && hasWebGL() ? "scattergl" : "scatter";
  window.reportTraceType = traceType;

  const symlogScale = data.symlog_scale;
  const symlog = (v) => (v === null ? null : Math.sign(v) * Math.log10(1 + Math.abs(v) / symlogScale));
  const symlogOn = panels.map((panel) => panel.symlog);

  function axisName(i, letter) {
    return letter + (i === 0 ? "" : String(i + 1));
  }

  function shownX(i, x) {
    return symlogOn[i] ? x.map(symlog) : x;
  }

  function xAxis(i) {
    const panel = panels[i];
    const title = {text: panel.x_title + (symlogOn[i] ? " (symlog)" : ""), font: {size: 11}};
    return symlogOn[i] ? {title: title, tickmode: "array", tickvals: panel.tickvals, ticktext: panel.ticktext, autorange: true}
                       : {title: title, tickvals: null, ticktext: null, tickmode: "auto", autorange: true};
  }

  function setSymlog(on) {
    const div = document.getElementById("scatter");
    panels.forEach((_, i) => { symlogOn[i] = on && panels[i].tickvals !== undefined; });
    const xs = [];
    const traces = [];
    let n = 0;
    panels.forEach((panel, i) => panel.traces.forEach((t) => { xs.push(shownX(i, t.x)); traces.push(n++); }));
    const relayout = {};
    panels.forEach((_, i) => {
      Object.entries(xAxis(i)).forEach(([key, value]) => { relayout[axisName(i, "xaxis") + "." + key] = value; });
    });
    Plotly.update(div, {x: xs}, relayout, traces).then(() => {
      if (window.reportSelected !== undefined) select(position.get(window.reportSelected));
    });
  }

  function scatter() {
    const traces = [];
    const seen = new Set();
    const gap = 0.035;
    const layout = {
      hovermode: "closest", margin: {t: 64, l: 60, r: 20, b: 60}, annotations: [],
      legend: {orientation: "h", y: -0.18}, hoverlabel: {align: "left"},
    };
    panels.forEach((panel, i) => {
      const n = panels.length;
      const xa = axisName(i, "xaxis");
      const ya = axisName(i, "yaxis");
      layout[xa] = {domain: [i / n + (i ? gap : 0), (i + 1) / n - (i < n - 1 ? gap : 0)],
                    anchor: axisName(i, "y"), zeroline: false, ...xAxis(i)};
      layout[ya] = {anchor: axisName(i, "x"), title: {text: i === 0 ? "mean episode reward" : ""}};
      if (i) layout[ya].matches = "y";
      layout.annotations.push({text: panel.title, showarrow: false, font: {size: 12},
                               xref: axisName(i, "x") + " domain", yref: axisName(i, "y") + " domain",
                               x: 0.5, y: 1.01, xanchor: "center", yanchor: "bottom"});
      panel.traces.forEach((t) => {
        traces.push({
          type: traceType, mode: "markers", name: t.name, legendgroup: t.name, showlegend: !seen.has(t.name),
          xaxis: axisName(i, "x"), yaxis: axisName(i, "y"), x: shownX(i, t.x), y: t.y, customdata: t.index,
          text: t.index.map((k) => models.hover[k]), hovertemplate: "%{text}<extra></extra>",
          marker: {color: t.color, size: (t.diverged ? 8 : 7) - (data.webgl ? 2.5 : 0), opacity: data.webgl ? 0.6 : 0.75,
                   symbol: t.diverged ? "x" : "circle"},
        });
        seen.add(t.name);
      });
    });
    // One "selected" ring per panel, empty until a model is chosen.
    panels.forEach((panel, i) => traces.push({
      type: traceType, mode: "markers", name: "selected", showlegend: false, hoverinfo: "skip",
      xaxis: axisName(i, "x"), yaxis: axisName(i, "y"), x: [], y: [],
      marker: {size: 16, color: "rgba(0,0,0,0)", line: {color: "black", width: 2.5}},
    }));
    const div = document.getElementById("scatter");
    return Plotly.newPlot(div, traces, layout, {responsive: true, displaylogo: false}).then(() => {
      div.on("plotly_click", (event) => {
        const point = event.points.find((p) => p.customdata !== undefined);
        if (point) select(point.customdata);
      });
      window.reportRenderMs = performance.now();
      document.body.dataset.rendered = "1";
    });
  }

  function cellText(value) {
    if (value === null || value === undefined) return "n/a";
    if (Array.isArray(value)) return value.map(cellText).join(", ");
    if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(8)));
    return String(value);
  }

  function showRow(k) {
    const box = document.getElementById("detail-row");
    const table = document.createElement("table");
    const head = table.insertRow();
    head.innerHTML = "<th>column</th><th>model " + ids[k] + "</th>";
    models.columns.forEach((column) => {
      const row = table.insertRow();
      row.insertCell().textContent = column;
      row.insertCell().textContent = cellText(models.values[column][k]);
    });
    const title = document.createElement("p");
    title.innerHTML = "<b>model " + ids[k] + "</b> (its last evaluated row)";
    box.replaceChildren(title, table);
  }

  function showCurve(k) {
    const div = document.getElementById("detail-curve");
    if (!data.curves) {
      div.innerHTML = '<p class="note">one evaluated epoch per model: no curve over epochs</p>';
      return;
    }
    const epochs = data.curves.epochs;
    const series = data.curves.series;
    if (series.reward_mean[k].filter((v) => v !== null).length < 2) {
      Plotly.purge(div);
      div.innerHTML = '<p class="note">model ' + ids[k] + " was evaluated at one epoch: no curve</p>";
      return;
    }
    const traces = [{x: epochs, y: series.reward_mean[k], name: "reward", mode: "lines+markers", yaxis: "y"}];
    Object.keys(series).filter((c) => c.startsWith("ll_")).forEach((c) => traces.push({
      x: epochs, y: series[c][k].map((v) => (v === null ? null : -v)), name: "NLL on " + c.slice(3),
      mode: "lines+markers", yaxis: "y2", line: {dash: "dot"},
    }));
    if (!div._fullLayout) div.innerHTML = "";
    Plotly.react(div, traces, {
      title: {text: "model " + ids[k] + " over epochs", font: {size: 13}}, margin: {t: 40, l: 55, r: 55, b: 45},
      xaxis: {title: {text: "epoch"}}, yaxis: {title: {text: "mean episode reward"}},
      yaxis2: {title: {text: "NLL (held-out)"}, overlaying: "y", side: "right"}, legend: {orientation: "h", y: -0.25},
    }, {displaylogo: false});
  }

  function select(k) {
    showRow(k);
    showCurve(k);
    const div = document.getElementById("scatter");
    const first = div.data.length - panels.length;
    const xs = [];
    const ys = [];
    panels.forEach((panel) => {
      let x = [], y = [];
      const i = xs.length;
      panel.traces.forEach((t) => {
        const j = t.index.indexOf(k);
        if (j >= 0) { x = shownX(i, [t.x[j]]); y = [t.y[j]]; }
      });
      xs.push(x);
      ys.push(y);
    });
    Plotly.restyle(div, {x: xs, y: ys}, panels.map((_, i) => first + i));
    document.getElementById("model-msg").textContent = "";
    window.reportSelected = ids[k];
  }

  function byId() {
    const id = Number(document.getElementById("model-id").value);
    const message = document.getElementById("model-msg");
    if (!position.has(id)) {
      message.textContent = "no model " + id + " in this run";
      return;
    }
    select(position.get(id));
  }

  const toggle = document.getElementById("symlog");
  toggle.checked = symlogOn.some((on) => on);
  toggle.addEventListener("change", () => setSymlog(toggle.checked));
  document.getElementById("model-go").addEventListener("click", byId);
  document.getElementById("model-id").addEventListener("keydown", (e) => { if (e.key === "Enter") byId(); });
  scatter();
})();
