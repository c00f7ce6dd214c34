// The API from the browser: every request carries the X-API-Key kept in sessionStorage (never in a URL).
// Errors are ApiError with the server's problem+json body (status, detail, errors: [{field, message}]).

const KEY_STORAGE = "ris-jobs.api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function check(response) {
  if (response.ok) return response;
  let problem;
  try {
    problem = await response.json();
  } catch {
    problem = { title: response.statusText, status: response.status };
  }
  const error = new ApiError(response.status, problem);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("ris-unauthorized", { detail: error }));
  throw error;
}

export async function request(method, path, { body, query, signal } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query || {})) if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  return check(await fetch(url, init));
}

export async function getJson(path, query) {
  return (await request("GET", path, { query })).json();
}

export async function postJson(path, body) {
  return (await request("POST", path, { body })).json();
}

// A job's file (checkpoint, plot) as an object URL: <a href> and <img src> cannot send the key header.
export async function blobUrl(path) {
  const response = await request("GET", path);
  return URL.createObjectURL(await response.blob());
}

// Save a file of the API to the user's disk under `filename`.
export async function saveFile(path, filename) {
  const url = await blobUrl(path);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// Parse a text/event-stream body: calls onEvent({event, data, id}) per event; returns when the body ends.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) onEvent({ event: event.event || "message", data: event.data.join("\n"), id: event.id });
        event = { event: "", data: [], id: event.id };
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (name === "event") event.event = val;
        else if (name === "data") event.data.push(val);
        else if (name === "id") event.id = val;
      }
    }
  }
}

// Follow a job's metric stream (SSE over fetch, so the key travels as a header). onMetric(point) gets each
// point once, in seq order; onState({state, failure}) each state event. A dropped connection is reopened with
// Last-Event-ID. Resolves when the stream ends after a terminal state; abort with `signal`.
export async function followMetrics(jobId, { onMetric, onState, signal }) {
  let lastSeq = 0;
  let failures = 0;
  for (;;) {
    let terminal = false;
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastSeq) h["Last-Event-ID"] = String(lastSeq);
      const response = await check(await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/metrics/stream`, { headers: h, signal }));
      await readEvents(response.body, (ev) => {
        failures = 0;
        if (ev.event === "metric") {
          const point = JSON.parse(ev.data);
          if (point.seq <= lastSeq) return;
          lastSeq = point.seq;
          onMetric(point);
        } else if (ev.event === "state") {
          const state = JSON.parse(ev.data);
          terminal = ["SUCCEEDED", "FAILED", "CANCELLED"].includes(state.state);
          onState(state);
        }
      });
      if (terminal) return;
    } catch (error) {
      if (signal?.aborted || error instanceof ApiError) throw error;
    }
    failures += 1;
    await new Promise((resolve) => setTimeout(resolve, Math.min(10_000, 500 * 2 ** (failures - 1))));
  }
}
