// The key bar of the docs pages: stores the typed key in sessionStorage (shared with the dashboard) and reloads.

import { apiKey, setApiKey } from "./api.js";

export function installKeyBar() {
  const input = document.getElementById("api-key");
  input.placeholder = apiKey() ? "key set for this tab" : "";
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    window.location.reload();
  });
}
