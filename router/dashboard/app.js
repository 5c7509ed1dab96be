// agp-mesh control plane dashboard: renders /api/status snapshots, live over server-sent events.
// No framework and no build step: a tiny element helper, textContent only (names come from peers).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }

  function fmtNum(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return Number(v).toFixed(d).replace(/\.0+$/, "").replace(/(\.\d*?)0+$/, "$1");
  }

  function fmtInt(v) {
    return v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US");
  }

  function fmtDuration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d}d ${hh}h`;
    if (hh) return `${hh}h ${m}m`;
    if (m) return `${m}m ${s % 60}s`;
    return `${s}s`;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function sum(obj) {
    return Object.values(obj || {}).reduce((a, b) => a + Number(b || 0), 0);
  }

  // A sparkline: area + line, scaled to the series' own max (flat at zero when idle).
  function sparkline(values) {
    const w = 120, hgt = 32, pts = (values || []).slice(-60);
    const el = svg("svg", { class: "spark", viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: "none", "aria-hidden": "true" });
    if (pts.length < 2) return el;
    const max = Math.max(...pts, 1e-9);
    const step = w / (pts.length - 1);
    const xy = pts.map((v, i) => [i * step, hgt - 2 - (max > 0 ? (v / max) * (hgt - 4) : 0)]);
    const line = xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
    el.append(svg("path", { d: `M0,${hgt} L${line.replace(/ /g, " L")} L${w},${hgt} Z` }));
    el.append(svg("polyline", { points: line }));
    return el;
  }

  function kpi(label, value, unit, note, series, alert) {
    return h("div", { class: "kpi" + (alert ? " alert" : "") },
      h("span", { class: "label" }, label),
      h("span", { class: "value" }, value, unit ? h("small", {}, unit) : null),
      h("span", { class: "note" }, note || "\u00a0"),
      sparkline(series));
  }

  function renderKpis(st) {
    const r = st.router || {}, rates = st.rates || {}, hist = st.history || {};
    const drops = sum(r.drops), denials = sum(r.denials), auth = sum(r.auth_failures);
    $("kpis").replaceChildren(
      kpi("requests", fmtNum(rates.requests || 0), "/s", `${fmtInt(r.requests)} total · ${fmtInt(r.replies)} replies`, hist.requests),
      kpi("pub/sub", fmtNum(rates.published_messages || 0), "msg/s", `${fmtInt(r.published_messages)} delivered`, hist.publishes),
      kpi("round trip", st.rtt_ms === null || st.rtt_ms === undefined ? "–" : fmtNum(st.rtt_ms), "ms", "control plane → router", hist.rtt_ms),
      kpi("drops", fmtInt(drops), null, `${fmtNum(rates.drops || 0)}/s now`, hist.drops, (rates.drops || 0) > 0),
      kpi("denials", fmtInt(denials), null, `${fmtInt(auth)} auth failures`, hist.denials, (rates.denials || 0) > 0));
  }

  function loadBar(load) {
    const pct = Math.max(0, Math.min(1, load || 0));
    const cls = pct >= 0.9 ? "bar high" : pct >= 0.6 ? "bar mid" : "bar";
    return h("div", { class: cls }, h("i", { style: `width:${(pct * 100).toFixed(1)}%` }));
  }

  function splitName(full) {
    const i = full.lastIndexOf("/");
    return i < 0 ? ["", full] : [full.slice(0, i + 1), full.slice(i + 1)];
  }

  function renderServices(st) {
    const rows = [];
    const services = st.services || [];
    let instances = 0;
    for (const s of services) {
      instances += (s.instances || []).length;
      const [ns, name] = splitName(s.service);
      const chips = (s.instances || []).map((i) => {
        const short = i.name.slice(s.service.length + 1) || i.name;
        return h("span", { class: "chip" + (i.accepting === false ? " draining" : ""), title: i.name, "data-instance": i.name },
          h("span", { class: "dot" }), short,
          h("span", { class: "mini" }, `${i.inflight}/${i.capacity}`),
          h("button", { class: "admin-only danger", title: "drain: route nothing new to it", onclick: () => admin("drain", { instance: i.name }) }, "drain"));
      });
      rows.push(h("tr", { "data-service": s.service },
        h("td", {}, h("div", { class: "svc-name" }, h("span", { class: "svc-ns" }, ns), name),
          h("div", { class: "svc-policy" }, s.policy || "")),
        h("td", {}, h("div", { class: "chips" }, chips)),
        h("td", {}, h("span", { class: "load-text" }, `${s.inflight}/${s.capacity} busy · ${Math.round((s.load || 0) * 100)}%`), loadBar(s.load)),
        h("td", { class: "num" }, fmtInt(s.queued)),
        h("td", { class: "num" }, fmtNum(s.rate || 0)),
        h("td", { class: "num" }, s.latency_ms_est === null || s.latency_ms_est === undefined ? "–" : `${fmtNum(s.latency_ms_est)} ms`),
        h("td", { class: "num" }, fmtInt(s.served))));
    }
    $("services").replaceChildren(...rows);
    $("services-empty").hidden = services.length > 0;
    $("svc-summary").textContent = `${plural(services.length, "service")} · ${plural(instances, "instance")}`;
  }

  function kvList(title, obj, bad) {
    const entries = Object.entries(obj || {}).sort((a, b) => b[1] - a[1]);
    const out = [h("div", { class: "subhead" }, title)];
    if (!entries.length) out.push(h("div", { class: "kv" }, h("span", { class: "k muted" }, "none"), h("span", { class: "v" }, "0")));
    for (const [k, v] of entries) {
      out.push(h("div", { class: "kv" }, h("span", { class: "k" }, k), h("span", { class: "v" + (bad && v ? " bad" : "") }, fmtInt(v))));
    }
    return out;
  }

  function renderDrops(st) {
    const r = st.router || {};
    $("drops").replaceChildren(
      ...kvList("drops by reason", r.drops, true),
      ...kvList("denials by action", r.denials, true),
      ...kvList("auth failures", r.auth_failures, true),
      ...kvList("other", { malformed: r.malformed || 0, "errors sent": r.errors_sent || 0 }, false));
  }

  function renderRegistry(st) {
    const recs = st.registry;
    if (recs === null || recs === undefined) {
      $("registry").replaceChildren(h("li", {}, h("span", { class: "muted" }, "no registry on this mesh")));
      $("reg-summary").textContent = "";
      return;
    }
    $("registry").replaceChildren(...recs.map((rec) =>
      h("li", {}, h("span", { class: "n", title: `${rec.name}/${rec.instance}` }, `${rec.name}/${rec.instance}`),
        h("span", { class: "muted" }, rec.version ? `v${rec.version}` : "", rec.age !== undefined ? ` · ${fmtDuration(rec.age)}` : ""))));
    if (!recs.length) $("registry").replaceChildren(h("li", {}, h("span", { class: "muted" }, "no records")));
    $("reg-summary").textContent = plural(recs.length, "record");
  }

  function renderWorkflows(st) {
    const runs = st.workflows;
    if (runs === null || runs === undefined) {
      $("workflows").replaceChildren(h("p", { class: "empty" }, "No workflow store configured (set AGP_WORKFLOW_STORE)."));
      $("wf-summary").textContent = "";
      return;
    }
    if (!runs.length) {
      $("workflows").replaceChildren(h("p", { class: "empty" }, "No workflow runs yet."));
      $("wf-summary").textContent = "0 runs";
      return;
    }
    const now = Date.now() / 1000;
    $("workflows").replaceChildren(...runs.map((run) => {
      const steps = [];
      (run.steps || []).forEach((s, i) => {
        if (i) steps.push(h("span", { class: "arrow" }, "→"));
        const t = s.duration !== null && s.duration !== undefined ? ` ${fmtNum(s.duration)}s` : "";
        steps.push(h("span", { class: `step ${s.state}`, title: `${s.name}: ${s.state}${s.instance ? " on " + s.instance : ""}${s.error ? "\n" + s.error : ""}` }, s.name + t));
      });
      const active = run.state === "running" || run.state === "pending";
      return h("div", { class: "run", "data-run": run.id },
        h("div", {}, h("div", { class: "title" }, run.name, " ", h("span", { class: `badge ${run.state}` }, run.state)),
          h("div", { class: "meta" }, `${String(run.id).slice(0, 8)} · ${fmtDuration(now - run.created)} ago`)),
        h("div", { class: "steps" }, steps),
        active ? h("button", { class: "admin-only danger", onclick: () => admin("cancel", { run: run.id }) }, "cancel") : h("span"));
    }));
    const live = runs.filter((r) => r.state === "running").length;
    $("wf-summary").textContent = `${runs.length} recent · ${live} running`;
  }

  function render(st) {
    if (!st) return;
    const r = st.router || {};
    $("conn-dot").className = "dot " + (st.ok ? "ok" : "bad");
    $("conn-text").textContent = st.ok ? "connected" : `router unreachable${st.error ? ": " + st.error : ""}`;
    $("f-router").textContent = r.router_id || "–";
    $("f-uptime").textContent = fmtDuration(r.uptime);
    $("f-peers").textContent = fmtInt(r.peers);
    $("f-updated").textContent = st.time ? new Date(st.time * 1000).toLocaleTimeString() : "–";
    renderKpis(st);
    renderServices(st);
    renderDrops(st);
    renderRegistry(st);
    renderWorkflows(st);
  }

  // ---------------------------------------------------------------- admin
  function token() { return sessionStorage.getItem("agp-admin-token") || ""; }

  function setAdmin() {
    document.body.classList.toggle("admin", !!token());
    $("admin-msg").textContent = token() ? "admin actions enabled" : "";
  }

  async function admin(action, body) {
    if (action === "cancel" && !confirm(`Cancel run ${body.run}?`)) return;
    if (action === "drain" && !confirm(`Drain ${body.instance}?`)) return;
    try {
      const res = await fetch(`/api/admin/${action}`, {
        method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${token()}` },
        body: JSON.stringify(body) });
      const out = await res.json();
      $("admin-msg").textContent = res.ok ? `${action}: done` : `${action}: ${res.status} ${out.error || ""}`;
    } catch (e) {
      $("admin-msg").textContent = `${action}: ${e}`;
    }
  }

  $("admin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("admin-token").value.trim();
    if (v) sessionStorage.setItem("agp-admin-token", v); else sessionStorage.removeItem("agp-admin-token");
    $("admin-token").value = "";
    setAdmin();
  });

  // ---------------------------------------------------------------- live updates
  function connect() {
    if (!window.EventSource) { setInterval(() => fetch("/api/status").then((r) => r.json()).then(render), 1000); return; }
    const es = new EventSource("/api/events");
    es.onmessage = (ev) => { try { render(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
    es.onerror = () => { $("conn-dot").className = "dot bad"; $("conn-text").textContent = "reconnecting…"; };
  }

  setAdmin();
  render(window.AGP_STATUS);
  connect();
})();
