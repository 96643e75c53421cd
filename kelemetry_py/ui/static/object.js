// The object page: related-object tree and timeline, the selected mark's detail, the analysis; live when the
// range ends now.
import { api } from "./api.js";
import { duration, esc, html, isoTime, kindBadge, objectPath, parseJson, raw, time, toYaml, toast } from "./format.js";
import { Timeline } from "./timeline.js";

const MODES = [["full", "Full tree"], ["ancestors", "Ancestors"], ["owned", "Owned objects"], ["object", "Object only"]];
const LIVE_INTERVAL_MS = 1000; // one request at a time, none while the tab is hidden
const LOOKBACK = "now-1h";

function pageParams() {
  const query = new URLSearchParams(location.search);
  return {
    from: query.get("from") || LOOKBACK,
    to: query.get("to") || "",
    mode: query.get("mode") || "full",
    sel: query.get("sel") || "",
    view: query.get("view") || "",
  };
}

function setParam(name, value) {
  const url = new URL(location.href);
  if (value) url.searchParams.set(name, value); else url.searchParams.delete(name);
  history.replaceState(null, "", url);
}

function modeHref(mode) {
  const url = new URL(location.href);
  url.searchParams.set("mode", mode);
  url.searchParams.delete("sel");
  url.searchParams.delete("view");
  return url.pathname + url.search;
}

export function renderObject(main, target, navigate) {
  const params = pageParams();
  const live = !params.to || params.to === "now";
  document.title = `${target.resource}/${target.name} · kelemetry`;
  main.innerHTML = html`<section class="object-page">
    <div class="obj-head">
      <div class="obj-title">
        <span id="obj-kind" class="badge kind">&nbsp;</span>
        <h1><span class="ns">${target.namespace !== "_" ? target.namespace + "/" : ""}</span>${target.name}</h1>
        <span class="cluster">${target.cluster}</span>
        <span id="live" class="live" ${live ? "" : "hidden"} title="New activity appears as it happens">● live</span>
      </div>
      <nav class="modes" aria-label="Related objects">${raw(MODES.map(([mode, label], i) =>
        html`<a data-link href="${modeHref(mode)}" class="${mode === params.mode ? "current" : ""}"
          aria-current="${mode === params.mode ? "page" : "false"}" title="${label} (${i + 1})">${label}</a>`).join(""))}</nav>
      <div class="obj-actions">
        <span id="obj-range" class="muted"></span>
        <button type="button" id="zoom-out" title="Zoom out (-)" aria-label="Zoom out">−</button>
        <button type="button" id="zoom-in" title="Zoom in (+)" aria-label="Zoom in">+</button>
        <button type="button" id="fit" title="Fit to activity (0)">Fit</button>
        <a id="jaeger-trace" class="button" hidden>Jaeger UI</a>
        <button type="button" id="copy-link" title="Copy a link to this view">Copy link</button>
      </div>
    </div>
    <div class="legend" aria-hidden="true">
      <span><i class="lg audit"></i>audit request</span><span><i class="lg event"></i>event</span>
      <span><i class="lg diff"></i>diff</span><span><i class="lg error"></i>error</span><span><i class="lg warning"></i>warning</span>
      <span class="muted">drag to pan · ctrl+wheel to zoom · ←/→ marks · ↑/↓ objects</span>
    </div>
    <div class="obj-body">
      <div class="timeline" id="timeline"><div class="overlay" id="overlay">Loading…</div></div>
      <aside class="side">
        <section class="detail" id="detail" aria-live="polite"><p class="muted">Select a mark on the timeline to see who did what.</p></section>
        <section class="analysis" id="analysis"><h2>Analysis</h2><p class="muted">Loading…</p></section>
      </aside>
    </div>
  </section>`;

  const timelineBox = main.querySelector("#timeline");
  const overlay = main.querySelector("#overlay");
  const detail = main.querySelector("#detail");
  const analysisBox = main.querySelector("#analysis");
  const controller = new AbortController();
  let data = null;
  let signature = "";
  let pollTimer = 0;
  let detailRequest = 0;
  let stopped = false;

  const timeline = new Timeline(timelineBox, {
    onOpen: (row) => { if (!row.searched) navigate(relatedHref(row)); },
    onSelect: (row, mark) => {
      setParam("sel", mark ? `${row.key}|${mark.id}` : "");
      if (mark) showDetail(row, mark);
    },
    onView: (view) => setParam("view", view ? `${Math.round(view.t0)},${Math.round(view.t1)}` : ""),
  });
  timelineBox.append(overlay);

  main.querySelector("#zoom-in").addEventListener("click", () => timeline.zoom(0.5, timeline.selectedFraction()));
  main.querySelector("#zoom-out").addEventListener("click", () => timeline.zoom(2, timeline.selectedFraction()));
  main.querySelector("#fit").addEventListener("click", () => timeline.fit());
  main.querySelector("#copy-link").addEventListener("click", () => copyLink());

  const keys = (event) => {
    if (event.target.closest("input, select, textarea, dialog")) return;
    const index = ["1", "2", "3", "4"].indexOf(event.key);
    if (index >= 0 && !event.ctrlKey && !event.metaKey && !event.altKey) {
      event.preventDefault();
      navigate(modeHref(MODES[index][0]));
    } else if (event.key === "Escape") {
      detail.innerHTML = '<p class="muted">Select a mark on the timeline to see who did what.</p>';
      setParam("sel", "");
    } else if (event.key === "o" && !event.ctrlKey && !event.metaKey) {
      const row = timeline.rows[timeline.activeRow];
      if (row && !row.searched) navigate(relatedHref(row));
    } else if (event.key === "/") {
      event.preventDefault();
      navigate("/");
    } else if (!event.target.closest(".tl-scroll") && ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "+", "-", "0"].includes(event.key)) {
      timeline.scroll.focus({ preventScroll: true });
      timeline.onKey(event);
    }
  };
  document.addEventListener("keydown", keys);

  async function load(first) {
    const answer = await api("/api/ui/object", {
      cluster: target.cluster, resource: target.resource, namespace: target.namespace, name: target.name,
      from: params.from, to: params.to, mode: params.mode,
    }, { signal: controller.signal });
    const received = performance.now();
    const next = answer.objects.map((row) => `${row.key}:${row.marks.length}:${row.marks.length ? row.marks[row.marks.length - 1].id : ""}`).join(";");
    const changed = next !== signature;
    signature = next;
    data = answer;
    if (first) {
      const obj = answer.object;
      const kind = main.querySelector("#obj-kind");
      kind.outerHTML = kindBadge(obj.kind).replace('class="', 'id="obj-kind" class="');
      document.title = `${obj.kind} ${obj.namespace ? obj.namespace + "/" : ""}${obj.name} · kelemetry`;
      const jaeger = main.querySelector("#jaeger-trace");
      if (answer.jaeger) {
        jaeger.href = answer.jaeger;
        jaeger.hidden = false;
      }
    }
    main.querySelector("#obj-range").textContent = `${time(answer.range.from, { date: true, millis: false })} – ${live ? "now" : time(answer.range.to, { date: true, millis: false })} UTC`;
    if (!changed && !first) return;
    for (const row of answer.objects) row.searched = row.key === answer.object.key;
    timeline.range = answer.range;
    if (first && params.view) {
      const [t0, t1] = params.view.split(",").map(Number);
      timeline.range = answer.range;
      timeline.setData(answer.objects, answer.range);
      if (t1 > t0) timeline.setView(t0, t1);
    } else {
      timeline.setData(answer.objects, answer.range);
    }
    if (first) {
      const searched = answer.objects.findIndex((row) => row.searched);
      const [key, id] = params.sel.split("|");
      if (!(params.sel && timeline.selectMark(key, id))) timeline.selectRow(Math.max(0, searched), { mark: "none" });
    }
    renderAnalysis(answer.analysis);
    overlay.hidden = true;
    timeline.draw(); // now, not on the next frame: the page is complete when "ready" is set
    timelineBox.dataset.drawMs = String(Math.round(performance.now() - received));
    timelineBox.dataset.ready = "true";
    timelineBox.dataset.marks = String(answer.objects.reduce((sum, row) => sum + row.marks.length, 0));
  }

  function poll() {
    if (stopped || !live) return;
    pollTimer = setTimeout(async () => {
      if (!document.hidden) {
        try { await load(false); } catch (error) { if (error.name === "AbortError") return; }
      }
      poll();
    }, LIVE_INTERVAL_MS);
  }

  const started = performance.now();
  load(true)
    .then(() => {
      timelineBox.dataset.loadMs = String(Math.round(performance.now() - started));
      poll();
    })
    .catch((error) => {
      if (error.name === "AbortError") return;
      overlay.hidden = false;
      overlay.classList.add("error");
      overlay.textContent = error.status === 404
        ? "No activity of this object in this time range. Widen the range on the search page."
        : error.message;
      analysisBox.innerHTML = "<h2>Analysis</h2>";
    });

  async function showDetail(row, mark) {
    const request = ++detailRequest;
    detail.classList.add("loading");
    try {
      const full = await api("/api/ui/mark", { key: row.key, id: mark.id, from: params.from, to: params.to }, { signal: controller.signal });
      if (request !== detailRequest) return;
      detail.innerHTML = renderDetail(row, full);
    } catch (error) {
      if (error.name === "AbortError" || request !== detailRequest) return;
      detail.innerHTML = html`<p class="error">${error.message}</p>`;
    } finally {
      if (request === detailRequest) detail.classList.remove("loading");
    }
  }

  function renderAnalysis(doc) {
    if (!doc) {
      analysisBox.innerHTML = "<h2>Analysis</h2>";
      return;
    }
    const evidence = (item, label) => html`<button type="button" class="evidence" data-object="${item.object}" data-span="${item.spanId}">${raw(label)}</button>`;
    const s = doc.summary;
    const parts = [html`<h2>Analysis</h2><p class="summary">${s.objects} objects · ${s.spans} marks · ${s.rollouts} rollout${s.rollouts === 1 ? "" : "s"} ·
      <span class="${s.failedRequests ? "error-text" : ""}">${s.failedRequests} failed request${s.failedRequests === 1 ? "" : "s"}</span>
      (${s.routineFailedRequests} routine) · ${s.warningEvents} warning${s.warningEvents === 1 ? "" : "s"} · ${s.changes} change${s.changes === 1 ? "" : "s"}</p>`];
    const slowest = doc.latency.slowestStep;
    if (slowest) {
      parts.push(html`<p class="slowest">Slowest step: ${raw(evidence(slowest, html`<strong>${slowest.name}</strong> ${duration(slowest.durationMs)}`))}
        <span class="muted">on ${shortKey(slowest.object)}</span></p>`);
    }
    for (const rollout of doc.latency.rollouts) {
      const longest = Math.max(1, ...rollout.steps.map((step) => step.durationMs));
      parts.push(html`<details class="rollout" open><summary><strong>${rollout.kind}</strong> of ${shortKey(rollout.workload)}
        by ${rollout.trigger.actor} · ${duration(rollout.durationMs)} ${rollout.converged ? "" : raw('<span class="count warning">not converged</span>')}</summary>
        <p class="muted">${rollout.trigger.summary}</p>
        <ol class="steps">${raw(rollout.steps.map((step) => html`<li class="${step.name === rollout.slowestStep.name && step.durationMs === rollout.slowestStep.durationMs ? "slowest-step" : ""}">
          ${raw(evidence(step, html`<span class="step-name">${step.name}</span>`))}
          <span class="step-bar" style="--w:${((step.durationMs / longest) * 100).toFixed(1)}%"></span>
          <span class="step-time">${duration(step.durationMs)}</span></li>`).join(""))}</ol></details>`);
    }
    const failures = doc.failures.requests;
    if (failures.length) {
      parts.push(html`<h3>Failed requests</h3><ul class="failures">${raw(failures.map((item) => html`<li class="${item.routine ? "routine" : ""}">
        ${raw(evidence(item, html`<span class="code error-text">${item.code}</span> ${item.verb}${item.subresource ? " " + item.subresource : ""} ${shortKey(item.object)}`))}
        <span class="muted">${item.actor}${item.routine ? " · routine" : ""} · ${item.reason}</span></li>`).join(""))}</ul>`);
    }
    const warnings = doc.failures.warningEvents;
    if (warnings.length) {
      parts.push(html`<h3>Warnings</h3><ul class="failures">${raw(warnings.map((item) => html`<li>
        ${raw(evidence(item, html`<span class="warning-text">${item.reason}</span> ${shortKey(item.object)}`))} <span class="muted">${item.message}</span></li>`).join(""))}</ul>`);
    }
    const changes = doc.changes.entries;
    if (changes.length) {
      parts.push(html`<h3>Changes</h3><ul class="changes">${raw(changes.slice(-50).map((item) => html`<li>
        ${raw(evidence(item, html`${time(item.timeUnixNano / 1e6)} <strong>${item.actor}</strong> ${shortKey(item.object)}`))}
        <code>${item.lines.slice(0, 3).join("\n")}</code></li>`).join(""))}</ul>`);
    }
    analysisBox.innerHTML = parts.join("");
  }

  analysisBox.addEventListener("click", (event) => {
    const button = event.target.closest("button.evidence");
    if (!button) return;
    if (!timeline.selectMark(button.dataset.object, button.dataset.span)) toast("That mark is outside this view.");
  });

  async function copyLink() {
    const link = location.href;
    try {
      await navigator.clipboard.writeText(link);
    } catch {
      const input = document.createElement("textarea");
      input.value = link;
      document.body.append(input);
      input.select();
      document.execCommand("copy");
      input.remove();
    }
    main.querySelector("#copy-link").dataset.copied = link;
    toast("Link copied");
  }

  return () => {
    stopped = true;
    clearTimeout(pollTimer);
    controller.abort();
    timeline.destroy();
    document.removeEventListener("keydown", keys);
  };
}

/** The page of a related object, over the same range. */
function relatedHref(row) {
  const query = new URLSearchParams();
  const current = new URLSearchParams(location.search);
  for (const name of ["from", "to"]) if (current.get(name)) query.set(name, current.get(name));
  return `${objectPath(row)}${query.size ? "?" + query : ""}`;
}

function shortKey(key) {
  const [, , resource, namespace, name] = key.split("/");
  return `${resource}/${namespace ? namespace + "/" : ""}${name}`;
}

function field(label, value) {
  if (value === undefined || value === null || value === "" || (Array.isArray(value) && !value.length)) return "";
  return html`<dt>${label}</dt><dd>${Array.isArray(value) ? value.join(", ") : value}</dd>`;
}

function changeTable(changes) {
  return html`<table class="changes-table"><thead><tr><th>path</th><th>before</th><th>after</th></tr></thead><tbody>
    ${raw(changes.map((change) => html`<tr class="op-${change.op}"><td class="path">${change.path}</td>
      <td class="old">${raw(valueCell(change.old, change.op === "add"))}</td><td class="new">${raw(valueCell(change.new, change.op === "remove"))}</td></tr>`).join(""))}
  </tbody></table>`;
}

function valueCell(value, absent) {
  if (absent || value === undefined) return '<span class="muted">—</span>';
  if (value && typeof value === "object") return html`<pre>${toYaml(value)}</pre>`;
  return esc(typeof value === "string" ? value : JSON.stringify(value));
}

function renderDetail(row, mark) {
  const a = mark.attributes;
  const parts = [html`<header class="detail-head">
      <span class="badge mark-${mark.kind}">${mark.kind}</span>
      <h2>${mark.title}</h2>
      ${mark.error ? raw('<span class="count error">error</span>') : ""}${mark.warning ? raw('<span class="count warning">warning</span>') : ""}
    </header>
    <p class="muted">${raw(kindBadge(row.kind))} <a class="object-link" data-link href="${relatedHref(row)}" title="Open this object's page (o)">${row.namespace ? row.namespace + "/" : ""}${row.name}</a> ·
      <time datetime="${isoTime(mark.t)}">${time(mark.t, { date: true })} UTC</time> · ${duration(mark.d)}</p>
    <dl class="facts">
      ${raw(field("user", a.username))}${raw(field("impersonated", a.impersonatedUser))}
      ${raw(field("user agent", a.userAgent))}${raw(field("source IP", a.sourceIPs))}
      ${raw(field("verb", a.verb ? `${a.verb}${a.subresource ? " " + a.subresource : ""}` : ""))}
      ${raw(field("response code", a.responseCode))}${raw(field("field manager", a.fieldManager))}
      ${raw(field("operation", a.operation))}
      ${raw(field("type", a.type))}${raw(field("reason", a.reason))}${raw(field("reporter", a.reportingController || a.source))}
      ${raw(field("count", a.count))}
    </dl>`];
  if (mark.statusMessage) parts.push(html`<p class="error-text">${mark.statusMessage}</p>`);
  // What changed first, then how it was asked for, then the full object.
  const order = { error: 0, diff: 1, event: 2, request: 3, snapshot: 4 };
  const logs = [...mark.logs].sort((x, y) => (order[x.name] ?? 5) - (order[y.name] ?? 5));
  for (const log of logs) {
    const f = log.fields;
    if (log.name === "error") {
      parts.push(html`<h3>Error</h3><p class="error-text"><strong>${f.code} ${f.reason}</strong> ${f.message}</p>`);
    } else if (log.name === "request") {
      const patch = parseJson(f.patch);
      parts.push(html`<h3>Request</h3><pre class="code">${patch === undefined ? f.patch : toYaml(patch)}</pre>`);
    } else if (log.name === "diff") {
      const changes = parseJson(f.changes);
      parts.push(html`<h3>Changes</h3>${raw(Array.isArray(changes) && changes.length ? changeTable(changes) : html`<pre class="code">${f.diff}</pre>`)}`);
    } else if (log.name === "snapshot") {
      const snapshot = parseJson(f.snapshot);
      parts.push(html`<details class="snapshot" open><summary>Snapshot${f.operation ? ` (${f.operation})` : ""}</summary>
        <pre class="code">${snapshot === undefined ? f.snapshot : toYaml(snapshot)}</pre></details>`);
    } else if (log.name === "event") {
      parts.push(html`<h3>Message</h3><p>${f.message}</p>`);
    } else {
      parts.push(html`<h3>${log.name}</h3><pre class="code">${toYaml(f)}</pre>`);
    }
  }
  const shown = new Set(["username", "impersonatedUser", "userAgent", "sourceIPs", "verb", "subresource", "responseCode",
    "fieldManager", "operation", "type", "reason", "reportingController", "source", "count"]);
  const rest = Object.fromEntries(Object.entries(a).filter(([key]) => !shown.has(key)));
  parts.push(html`<details class="attributes"><summary>All tags</summary><pre class="code">${toYaml(rest)}</pre></details>`);
  return parts.join("");
}
