// Fetching the UI's JSON with the bearer token the user gave; a 401 asks for one and retries.
const TOKEN_KEY = "kelemetry.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let pendingToken = null;

export function askToken(reason) {
  if (pendingToken) return pendingToken;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  document.getElementById("token-reason").textContent = reason || "This server asks for a bearer token.";
  input.value = localStorage.getItem(TOKEN_KEY) || "";
  pendingToken = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      pendingToken = null;
      if (dialog.returnValue === "ok" && input.value.trim()) {
        localStorage.setItem(TOKEN_KEY, input.value.trim());
        resolve(true);
      } else {
        if (dialog.returnValue === "clear") localStorage.removeItem(TOKEN_KEY);
        resolve(false);
      }
    }, { once: true });
  });
  // Enter saves (a dialog form would otherwise take its first button, "Forget token").
  input.onkeydown = (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      dialog.close("ok");
    }
  };
  dialog.showModal();
  input.focus();
  return pendingToken;
}

export async function api(path, params = {}, { signal } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  for (;;) {
    const headers = { Accept: "application/json" };
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(url, { headers, signal });
    if (response.status === 401) {
      const reason = token ? "The token was not accepted. Enter another one." : "This server asks for a bearer token.";
      if (await askToken(reason)) continue;
      throw new ApiError(401, "Not signed in: this server needs a bearer token.");
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, body?.error?.message || response.statusText);
    return body;
  }
}
