// SwiftDeploy dashboard: one EventSource to the server, which follows the bus for every browser.
// No framework, no CDN: the charts are inline SVG drawn here.
"use strict";
(function () {
  const token = document.body.dataset.token;
  const q = token ? "?token=" + encodeURIComponent(token) : "";
  const POINTS = 300;
  const model = { points: { stable: [], canary: [] }, events: [], decisions: [] };
  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function time(iso) { return new Date(iso).toLocaleTimeString(); }

  function drawState(update) {
    const r = update.rollout;
    $("phase").textContent = update.phase_label;
    $("weight").textContent = r.weight + "%";
    const steps = $("steps");
    steps.replaceChildren(...r.steps.map((w, i) => {
      const cls = i === r.step ? "current" : i < r.step ? "done" : "";
      // a weight, or a pause step: {pause: seconds} or {pause: {}} (until `promote canary --continue`)
      const label = typeof w === "number" ? w + "%"
        : typeof w.pause === "number" ? "pause " + w.pause + " s" : "pause until continue";
      return el("li", cls, label + (i === r.step ? "  ← current" : ""));
    }));
    $("reasons").textContent = (r.last_reasons || []).join("; ");
    $("track-list").replaceChildren(...r.tracks.map((t) => {
      const box = el("div", "track " + t.track);
      box.append(el("h3", "", t.track + " " + t.version + " · " + t.weight + "%"));
      const list = el("ul");
      for (const i of t.instances) {
        const state = i.healthy === true ? "healthy" : i.healthy === false ? "unhealthy" : "unknown";
        list.append(el("li", "instance " + state, i.name + " (" + state + ")"));
      }
      box.append(list);
      return box;
    }));
    const audit = update.audit;
    const node = $("audit");
    if (!audit) { node.textContent = "not verified yet"; node.className = ""; }
    else if (audit.chain_ok) { node.textContent = "chain verified (" + audit.lines + " lines, " + time(audit.time) + ")"; node.className = "ok"; }
    else { node.textContent = "chain BROKEN at line " + audit.first_bad_line + ": " + audit.problem; node.className = "bad"; }
  }

  function addEvent(line) {
    model.events.push(line);
    const li = el("li");
    li.append(el("span", "time", time(line.time)), el("span", "type", line.type), el("span", "summary", line.summary));
    $("events").prepend(li);
    while ($("events").children.length > 60) $("events").lastChild.remove();
  }

  function addDecision(d) {
    const li = el("li", "decision");
    li.append(el("span", "time", time(d.time)), el("span", d.allow ? "allow" : d.inconclusive ? "inconclusive" : "deny", d.allow ? "ALLOW" : d.inconclusive ? "INCONCLUSIVE" : "DENY"),
      el("span", "domain", " " + d.domain + " "));
    if (d.engine) li.append(el("span", "engine", "[" + d.engine + "] "));
    if (d.reasons && d.reasons.length) li.append(el("span", "reason", d.reasons.join("; ")));
    $("decisions").prepend(li);
    while ($("decisions").children.length > 30) $("decisions").lastChild.remove();
  }

  const CHARTS = { rate: (p) => p.rate, error: (p) => p.error === null ? null : p.error * 100, p99: (p) => p.p99 };

  function drawCharts() {
    const all = model.points.stable.concat(model.points.canary);
    if (!all.length) return;
    const t0 = Math.min(...all.map((p) => p.t)), t1 = Math.max(...all.map((p) => p.t));
    const span = Math.max(t1 - t0, 1);
    for (const [name, value] of Object.entries(CHARTS)) {
      const svg = $("chart-" + name);
      const values = all.map(value).filter((v) => v !== null && v !== undefined);
      const top = Math.max(...values, 0) * 1.1 || 1;
      const parts = [];
      for (const track of ["stable", "canary"]) {
        const pts = model.points[track].filter((p) => value(p) !== null && value(p) !== undefined)
          .map((p) => [((p.t - t0) / span) * 590 + 5, 135 - (value(p) / top) * 125]);
        if (!pts.length) continue;
        parts.push('<polyline class="' + track + '" points="' + pts.map((xy) => xy.join(",")).join(" ") + '"></polyline>');
        for (const [x, y] of pts) parts.push('<circle class="point ' + track + '" r="1.6" cx="' + x.toFixed(1) + '" cy="' + y.toFixed(1) + '"></circle>');
      }
      parts.push('<text x="4" y="10">' + top.toFixed(name === "rate" ? 1 : 2) + "</text>");
      svg.innerHTML = parts.join("");
      svg.dataset.points = String(svg.querySelectorAll("circle").length);
    }
  }

  function apply(update) {
    switch (update.kind) {
      case "snapshot":
        model.points = update.points;
        $("events").replaceChildren(); $("decisions").replaceChildren();
        update.events.forEach(addEvent); update.decisions.forEach(addDecision);
        drawState(update); drawCharts();
        break;
      case "state": drawState(update); break;
      case "event":
        addEvent(update.event);
        if (update.decision) addDecision(update.decision);
        drawState(update);
        break;
      case "metric": {
        const list = model.points[update.track];
        list.push(update.point);
        if (list.length > POINTS) list.shift();
        drawCharts();
        break;
      }
    }
  }

  function connect() {
    const source = new EventSource("api/stream" + q);
    source.onopen = () => { $("live").textContent = "live"; $("live").className = "live on"; };
    source.onmessage = (message) => apply(JSON.parse(message.data));
    source.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "live off"; };
  }

  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", async () => {
      const out = $("action-result");
      out.textContent = button.textContent + "…";
      const response = await fetch("api/actions/" + button.dataset.action + q,
        { method: "POST", headers: { "X-SwiftDeploy-Action": "1" } });
      const body = await response.json();
      out.textContent = (body.ok ? "✓ " : "✗ ") + (body.message || body.error || "");
    });
  }
  connect();
})();
