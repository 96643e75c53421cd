// Entry point: theme, token, help, and a tiny router between the search page and the object page.
import { api, askToken } from "./api.js";
import { html, isoTime, objectPath } from "./format.js";
import { renderSearch } from "./search.js";
import { renderObject } from "./object.js";

const main = document.getElementById("main");
let cleanup = null;

export function navigate(url, { replace = false } = {}) {
  const target = new URL(url, location.origin);
  if (replace) history.replaceState(null, "", target);
  else history.pushState(null, "", target);
  route();
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const path = decodeURIComponent(location.pathname);
  const parts = location.pathname.split("/").slice(1).map(decodeURIComponent);
  if (parts[0] === "objects" && parts.length === 5) {
    const [, cluster, resource, namespace, name] = parts;
    cleanup = renderObject(main, { cluster, resource, namespace, name }, navigate);
  } else if (parts[0] === "trace" && parts.length === 2) {
    openTrace(parts[1]);
  } else {
    document.title = "kelemetry";
    cleanup = renderSearch(main, navigate, path);
  }
}

async function openTrace(id) {
  main.innerHTML = '<p class="empty">Opening the trace…</p>';
  try {
    const found = await api("/api/ui/trace", { id });
    const query = new URLSearchParams({ from: isoTime(found.from), to: isoTime(found.to), mode: found.mode });
    navigate(`${objectPath(found)}?${query}`, { replace: true });
  } catch (error) {
    main.innerHTML = html`<p class="empty error">${error.message}</p>`;
  }
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-link]");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey) return;
  event.preventDefault();
  navigate(link.href);
});
window.addEventListener("popstate", route);

document.getElementById("theme-toggle").addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  localStorage.setItem("kelemetry.theme", next);
  window.dispatchEvent(new Event("themechange"));
});
document.getElementById("token-button").addEventListener("click", async () => {
  if (await askToken("Set the bearer token sent to this server.")) route();
});
const help = document.getElementById("help-dialog");
document.getElementById("help-button").addEventListener("click", () => help.showModal());
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, select, textarea, dialog");
  if (event.key === "?" && !typing) {
    event.preventDefault();
    help.showModal();
  }
});

route();
