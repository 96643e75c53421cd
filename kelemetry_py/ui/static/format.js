// Small formatting helpers shared by the pages: times (UTC), durations, kinds, YAML, HTML escaping.

export function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function html(strings, ...values) {
  return strings.reduce((out, part, i) => {
    if (i === 0) return part;
    const value = values[i - 1];
    const text = value instanceof Raw ? value.text : Array.isArray(value) ? value.map((v) => (v instanceof Raw ? v.text : esc(v))).join("") : esc(value);
    return out + text + part;
  }, "");
}

class Raw {
  constructor(text) { this.text = text; }
}
export const raw = (text) => new Raw(text);

const pad = (n, w = 2) => String(n).padStart(w, "0");

export function time(ms, { date = false, millis = true } = {}) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  const clock = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}${millis ? "." + pad(d.getUTCMilliseconds(), 3) : ""}`;
  return date ? `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${clock}` : clock;
}

export function isoTime(ms) {
  return new Date(ms).toISOString();
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
  const h = Math.floor(m / 60);
  return h < 48 ? `${h} h ${m % 60} m` : `${Math.floor(h / 24)} d ${h % 24} h`;
}

export function ago(ms, now = Date.now()) {
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

const SHORT_KINDS = {
  Deployment: "deploy", ReplicaSet: "rs", Pod: "pod", StatefulSet: "sts", DaemonSet: "ds", Job: "job", CronJob: "cj",
  Service: "svc", Endpoints: "ep", EndpointSlice: "eps", ConfigMap: "cm", Secret: "secret", Namespace: "ns",
  Node: "node", ServiceAccount: "sa", PersistentVolumeClaim: "pvc", PersistentVolume: "pv", Lease: "lease",
  ControllerRevision: "rev", ClusterRole: "crole", Event: "ev",
};

export function shortKind(kind) {
  return SHORT_KINDS[kind] || kind.toLowerCase().slice(0, 6);
}

export function kindBadge(kind) {
  return html`<span class="badge kind kind-${shortKind(kind)}" title="${kind}">${shortKind(kind)}</span>`;
}

/** The page path of an object: /objects/<cluster>/<resource>/<namespace or _>/<name>. */
export function objectPath(obj) {
  const resource = obj.group && obj.resource === "events" ? `${obj.resource}.${obj.group}` : obj.resource;
  return ["", "objects", obj.cluster, resource, obj.namespace || "_", obj.name].map(encodeURIComponent).join("/");
}

const PLAIN = /^[A-Za-z0-9_./@:-][A-Za-z0-9_ ./@:=+-]*$/;
const AMBIGUOUS = /^(true|false|yes|no|on|off|null|~|-?\d[\d_.eE+-]*|0x[0-9a-fA-F]+)$/i;

function scalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  const text = String(value);
  if (text === "" || !PLAIN.test(text) || AMBIGUOUS.test(text) || text.endsWith(" ") || text.includes(": ") || text.includes(" #")) {
    return JSON.stringify(text);
  }
  return text;
}

/** A readable YAML rendering of a JSON value (block style, like kubectl get -o yaml). */
export function toYaml(value, indent = "") {
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return value.map((item) => {
      const body = toYaml(item, indent + "  ");
      const nested = item && typeof item === "object" && Object.keys(item).length;
      return `${indent}- ${nested ? body.trimStart() : body}`;
    }).join("\n");
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return "{}";
    return keys.map((key) => {
      const item = value[key];
      const name = `${indent}${scalar(key)}:`;
      if (item && typeof item === "object" && (Array.isArray(item) ? item.length : Object.keys(item).length)) {
        return `${name}\n${toYaml(item, Array.isArray(item) ? indent : indent + "  ")}`;
      }
      if (typeof item === "string" && item.includes("\n")) {
        return `${name} |\n${item.split("\n").map((line) => indent + "  " + line).join("\n")}`;
      }
      return `${name} ${toYaml(item, indent + "  ")}`;
    }).join("\n");
  }
  return scalar(value);
}

export function parseJson(text) {
  if (typeof text !== "string") return text;
  try { return JSON.parse(text); } catch { return undefined; }
}

export function toast(message) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("show"), 1800);
}
