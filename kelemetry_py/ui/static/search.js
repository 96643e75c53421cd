// The search page: one box, pickers for cluster, namespace, kind and time range, results with sparklines.
import { api } from "./api.js";
import { ago, esc, html, kindBadge, objectPath, raw, time } from "./format.js";

const RECENT_KEY = "kelemetry.recent";
const RANGES = [
  ["now-15m", "Last 15 minutes"], ["now-1h", "Last hour"], ["now-6h", "Last 6 hours"],
  ["now-24h", "Last 24 hours"], ["now-2d", "Last 2 days"], ["now-7d", "Last 7 days"], ["custom", "Absolute range…"],
];
const EXAMPLES = ["deploy/web -n shop", "pod/web-6b95…", "name=web", "username=admin", "error=true"];

function recent() {
  try { return JSON.parse(localStorage.getItem(RECENT_KEY) || "[]"); } catch { return []; }
}

function remember(entry) {
  const label = JSON.stringify(entry);
  const list = [entry, ...recent().filter((item) => JSON.stringify(item) !== label)].slice(0, 8);
  localStorage.setItem(RECENT_KEY, JSON.stringify(list));
}

function searchUrl(state) {
  const url = new URL("/", location.origin);
  for (const [key, value] of Object.entries(state)) if (value) url.searchParams.set(key, value);
  return url.pathname + url.search;
}

// datetime-local inputs are read and written as UTC: every time on these pages is UTC.
const toLocalInput = (value) => (value ? new Date(value).toISOString().slice(0, 19) : "");
const fromLocalInput = (value) => (value ? new Date(value + (value.length === 16 ? ":00" : "") + "Z").toISOString() : "");

function sparkline(counts, errors) {
  const max = Math.max(1, ...counts);
  const width = 120, height = 24, step = width / counts.length;
  const bars = counts.map((count, i) => {
    if (!count) return "";
    const h = Math.max(2, (count / max) * (height - 2));
    return `<rect x="${(i * step).toFixed(1)}" y="${(height - h).toFixed(1)}" width="${Math.max(1, step - 0.6).toFixed(1)}" height="${h.toFixed(1)}"/>`;
  }).join("");
  return `<svg class="spark${errors ? " has-errors" : ""}" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" aria-hidden="true">${bars}</svg>`;
}

function resultRow(obj, state) {
  const params = new URLSearchParams();
  if (state.from) params.set("from", state.from);
  if (state.to) params.set("to", state.to);
  const href = `${objectPath(obj)}${params.size ? "?" + params : ""}`;
  const change = obj.lastChange;
  return html`<li><a class="result" href="${href}" data-link data-key="${obj.key}">
    ${raw(kindBadge(obj.kind))}
    <span class="res-name"><span class="ns">${obj.namespace ? obj.namespace + "/" : ""}</span><strong>${obj.name}</strong>
      <span class="cluster">${obj.cluster}</span></span>
    ${raw(sparkline(obj.spark, obj.errors))}
    <span class="res-change" title="${time(obj.last, { date: true })} UTC · ${change ? change.title : ""}">
      <span class="muted">${obj.last ? ago(obj.last) : ""}</span> ${change ? change.title : ""}</span>
    <span class="res-counts">
      <span class="count" title="audit requests, events and diffs">${obj.marks} marks</span>
      <span class="count ${obj.errors ? "error" : "zero"}" title="errors">${obj.errors} err</span>
      ${obj.warnings ? raw(html`<span class="count warning" title="warnings">${obj.warnings} warn</span>`) : ""}
    </span>
  </a></li>`;
}

export function renderSearch(main, navigate) {
  const query = new URLSearchParams(location.search);
  const state = {
    q: query.get("q") || "", cluster: query.get("cluster") || "", namespace: query.get("namespace") || "",
    kind: query.get("kind") || "", from: query.get("from") || "now-1h", to: query.get("to") || "",
  };
  const preset = RANGES.some(([value]) => value === state.from) && !state.to ? state.from : "custom";
  main.innerHTML = html`<section class="search-page">
    <form id="search-form" class="search-form" role="search" autocomplete="off">
      <input id="q" name="q" type="search" value="${state.q}" aria-label="Search objects"
        placeholder="deploy/web -n shop · pod/web-6b95… · name=web · username=admin · error=true">
      <select id="cluster" aria-label="Cluster"><option value="">All clusters</option></select>
      <select id="namespace" aria-label="Namespace"><option value="">All namespaces</option></select>
      <select id="kind" aria-label="Kind"><option value="">All kinds</option></select>
      <select id="range" aria-label="Time range">${raw(RANGES.map(([value, label]) =>
        html`<option value="${value}" ${value === preset ? "selected" : ""}>${label}</option>`).join(""))}</select>
      <span id="absolute" class="absolute ${preset === "custom" ? "" : "unused"}">
        <input id="from" type="datetime-local" step="1" aria-label="From (UTC)" value="${toLocalInput(preset === "custom" ? state.from : "")}">
        <span>–</span>
        <input id="to" type="datetime-local" step="1" aria-label="To (UTC)" value="${toLocalInput(state.to)}">
        <span class="muted">UTC</span>
      </span>
      <button type="submit" id="search-button">Search</button>
    </form>
    <div class="recent" id="recent"></div>
    <div class="results-head" id="results-head">&nbsp;</div>
    <ol class="results" id="results" aria-live="polite"></ol>
  </section>`;
  const form = main.querySelector("#search-form");
  const box = main.querySelector("#q");
  const results = main.querySelector("#results");
  const head = main.querySelector("#results-head");
  const rangeSelect = main.querySelector("#range");
  const controller = new AbortController();

  const recentBox = main.querySelector("#recent");
  const recents = recent();
  recentBox.innerHTML = recents.length
    ? html`<span class="muted">Recent:</span> ${raw(recents.map((entry) => html`<a class="chip" data-link href="${searchUrl(entry)}">${entry.q || "(everything)"}${entry.namespace ? " · " + entry.namespace : ""}${entry.kind ? " · " + entry.kind : ""}</a>`).join(""))}`
    : html`<span class="muted">Try:</span> ${raw(EXAMPLES.map((text) => html`<a class="chip example" data-link href="${searchUrl({ ...state, q: text })}">${text}</a>`).join(""))}`;

  rangeSelect.addEventListener("change", () => {
    const custom = rangeSelect.value === "custom";
    main.querySelector("#absolute").classList.toggle("unused", !custom);
    if (custom && !main.querySelector("#from").value) {
      main.querySelector("#from").value = toLocalInput(Date.now() - 3600e3);
      main.querySelector("#to").value = toLocalInput(Date.now());
    }
  });

  function formState() {
    const custom = rangeSelect.value === "custom";
    return {
      q: box.value.trim(),
      cluster: main.querySelector("#cluster").value,
      namespace: main.querySelector("#namespace").value,
      kind: main.querySelector("#kind").value,
      from: custom ? fromLocalInput(main.querySelector("#from").value) : rangeSelect.value,
      to: custom ? fromLocalInput(main.querySelector("#to").value) : "",
    };
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = formState();
    remember(next);
    navigate(searchUrl(next));
  });
  for (const id of ["cluster", "namespace", "kind"]) {
    main.querySelector(`#${id}`).addEventListener("change", () => form.requestSubmit());
  }

  const keys = (event) => {
    const typing = event.target.closest("input, select, textarea, dialog");
    if (event.key === "/" && !typing) {
      event.preventDefault();
      box.focus();
      box.select();
      return;
    }
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    if (typing && event.target !== box) return;
    const links = [...results.querySelectorAll("a.result")];
    if (!links.length) return;
    event.preventDefault();
    const at = links.indexOf(document.activeElement);
    const next = event.key === "ArrowDown" ? Math.min(links.length - 1, at + 1) : at - 1;
    if (next < 0) box.focus(); else links[next].focus();
  };
  document.addEventListener("keydown", keys);

  // Picker values from the chosen range (at least the last 7 days when the range is relative).
  const facetRange = state.to ? { from: state.from, to: state.to } : { from: "now-7d" };
  api("/api/ui/facets", facetRange, { signal: controller.signal }).then((facets) => {
    fill(main.querySelector("#cluster"), facets.clusters, state.cluster);
    fill(main.querySelector("#namespace"), facets.namespaces, state.namespace);
    fill(main.querySelector("#kind"), facets.kinds, state.kind);
    document.getElementById("jaeger-link").hidden = !facets.jaeger;
  }).catch(() => {});

  const hasQuery = query.has("q") || query.has("from") || query.has("namespace") || query.has("kind");
  if (hasQuery) {
    head.textContent = "Searching…";
    results.classList.add("loading");
    results.innerHTML = '<li class="skeleton"></li>'.repeat(4);
    api("/api/ui/search", { q: state.q, cluster: state.cluster, namespace: state.namespace, kind: state.kind,
      from: state.from, to: state.to }, { signal: controller.signal })
      .then((answer) => {
        results.classList.remove("loading");
        head.innerHTML = html`${answer.objects.length} object${answer.objects.length === 1 ? "" : "s"} active
          ${time(answer.range.from, { date: true, millis: false })} – ${time(answer.range.to, { date: true, millis: false })} UTC`;
        results.innerHTML = answer.objects.length
          ? answer.objects.map((obj) => resultRow(obj, state)).join("")
          : html`<li class="empty">Nothing matched. Widen the time range, or try <code>name=web</code> or <code>username=admin</code>.</li>`;
      })
      .catch((error) => {
        if (error.name === "AbortError") return;
        results.classList.remove("loading");
        head.textContent = "";
        results.innerHTML = html`<li class="empty error">${error.message}</li>`;
      });
  } else {
    head.textContent = "Search for an object by kind and name, a user, or errors.";
  }
  if (!hasQuery) box.focus();

  return () => {
    controller.abort();
    document.removeEventListener("keydown", keys);
  };
}

function fill(select, values, chosen) {
  const present = new Set(values);
  if (chosen && !present.has(chosen)) values = [chosen, ...values];
  select.insertAdjacentHTML("beforeend", values.map((value) => `<option ${value === chosen ? "selected" : ""}>${esc(value)}</option>`).join(""));
}
