// The dashboard's entry: the API key form, the error banner, and hash routing to the views
// (#/jobs, #/job/<id>, #/submit, #/compare?ids=a,b).

import { apiKey, setApiKey } from "./api.js";
import { renderCompare } from "./compare.js";
import { renderJob } from "./job.js";
import { renderJobs } from "./jobs.js";
import { renderSubmit } from "./submit.js";

const view = document.getElementById("view");
const banner = document.getElementById("banner");
let cleanup = null;

function showBanner(text) {
  banner.textContent = text;
  banner.hidden = !text;
}

function showKeyState() {
  document.getElementById("key-state").textContent = apiKey() ? "key set for this tab" : "";
}

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  showBanner("");
  view.replaceChildren();
  const [path, query] = (window.location.hash.slice(1) || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "job" && parts[1]) cleanup = renderJob(view, decodeURIComponent(parts[1]));
  else if (parts[0] === "submit") cleanup = renderSubmit(view);
  else if (parts[0] === "compare") cleanup = renderCompare(view, (params.get("ids") || "").split(",").filter(Boolean));
  else cleanup = renderJobs(view);
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("api-key");
  setApiKey(input.value.trim());
  input.value = "";
  showKeyState();
  route();
});

window.addEventListener("ris-unauthorized", () => {
  showBanner("The API answered 401: enter a valid API key above (it is kept in this tab only).");
});
window.addEventListener("hashchange", route);
showKeyState();
route();
