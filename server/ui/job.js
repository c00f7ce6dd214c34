// One job: its state, live charts from the metric stream, the events timeline, checkpoints with download
// links, and its report (a diagnostic's verdict table, an evaluation's tables) with the plots it wrote.

import { ApiError, followMetrics, getJson, request, saveFile } from "./api.js";
import { JOB_CHARTS, MetricChart } from "./charts.js";
import { renderReport } from "./report.js";
import { TERMINAL, el, fmtBytes, fmtNumber, fmtTime, problemText, stateBadge } from "./util.js";

const REFRESH_MS = 2000;

export function renderJob(view, jobId) {
  const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const abort = new AbortController();
  const head = el("section", { id: "job-head" });
  const charts = el("section", { class: "charts", id: "charts" });
  const events = el("ol", { class: "timeline", id: "events" });
  const checkpoints = el("tbody");
  const report = el("section", { id: "report" });
  const log = el("pre", { class: "log", id: "log" });
  let logOffset = 0;
  const error = el("p", { class: "error", hidden: true });
  view.append(
    head, error,
    el("h2", {}, "Metrics"), charts,
    el("div", { class: "columns" },
      el("section", {}, el("h2", {}, "Events"), events),
      el("section", {}, el("h2", {}, "Checkpoints"),
        el("table", { id: "checkpoints" }, el("thead", {}, el("tr", {},
          ["name", "phase", "epoch", "step", "size", "sha256"].map((h) => el("th", {}, h)))), checkpoints))),
    el("h2", {}, "Report"), report,
    el("details", { id: "log-box" }, el("summary", {}, "Log"), log),
  );

  const byChart = JOB_CHARTS.map((spec) => ({ spec, chart: new MetricChart(charts, spec) }));
  const nonfiniteSteps = new Set();
  let job = null;
  let reportShown = false;

  function showError(e) {
    error.textContent = problemText(e);
    error.hidden = false;
  }

  function renderHead() {
    const p = job.progress;
    const pct = Math.round(100 * p.fraction);
    const actions = [];
    if (!TERMINAL.includes(job.state)) {
      actions.push(el("button", { id: "cancel", onclick: () => request("POST", `${base}/cancel`).then(loadJob, showError) }, "Cancel"));
    } else {
      actions.push(el("button", { id: "delete", onclick: async () => {
        if (!window.confirm(`Delete job ${job.id} with its metrics, checkpoints and logs?`)) return;
        try { await request("DELETE", base); window.location.hash = "#/jobs"; } catch (e) { showError(e); }
      } }, "Delete"));
    }
    const latest = Object.entries(job.latest_metrics || {}).filter(([k]) => !k.startsWith("nonfinite/"));
    head.replaceChildren(...[
      el("h1", {}, job.name || "(unnamed job)", " ", stateBadge(job.state)),
      el("p", { class: "mono" }, `${job.kind} · ${job.id} · attempt ${job.attempt} of ${job.max_attempts}`),
      el("p", {}, el("progress", { max: 100, value: pct }), ` ${pct}% · phase ${p.phase || "–"} · epoch ${p.epoch} · step ${p.step}`,
        ` · non-finite steps skipped: ${job.nonfinite_steps.total}`),
      job.failure ? el("p", { class: "error", id: "failure" }, `${job.failure.reason}: ${job.failure.message}`) : null,
      latest.length ? el("details", { class: "latest" }, el("summary", {}, `Latest metrics (${latest.length})`),
        latest.map(([k, v]) => el("span", {}, `${k} = ${fmtNumber(v)}`))) : null,
      el("p", { class: "toolbar" }, actions, el("span", { class: "muted" },
        `created ${fmtTime(job.created_at)} · started ${fmtTime(job.started_at)} · finished ${fmtTime(job.finished_at)}`)),
    ].filter(Boolean));
  }

  async function loadJob() {
    try {
      job = await getJson(base);
      renderHead();
      await Promise.all([loadEvents(), loadCheckpoints(), loadLog()]);
      if (TERMINAL.includes(job.state) && !reportShown) {
        reportShown = true;
        await loadReport();
      }
    } catch (e) {
      if (!abort.signal.aborted) showError(e);
    }
  }

  async function loadEvents() {
    const list = await getJson(`${base}/events`);
    events.replaceChildren(...list.map((e) => el("li", {},
      el("time", {}, fmtTime(e.at)), " ", e.from_state ? `${e.from_state} → ` : "", stateBadge(e.to_state),
      e.message ? el("span", { class: "muted" }, ` ${e.message}`) : null)));
  }

  let logBusy = false;
  async function loadLog() {
    if (logBusy) return; // another call is reading: the offsets must not interleave
    logBusy = true;
    try {
      await readLog();
    } finally {
      logBusy = false;
    }
  }

  async function readLog() {
    for (;;) { // read every new byte; the server hands the next offset back
      const response = await request("GET", `${base}/logs`, { query: { offset: logOffset } });
      const text = await response.text();
      logOffset = Number(response.headers.get("X-Next-Offset") || logOffset);
      if (!text) return;
      log.append(text);
    }
  }

  async function loadCheckpoints() {
    const list = await getJson(`${base}/checkpoints`);
    checkpoints.replaceChildren(...list.map((c) => el("tr", {},
      el("td", {}, el("a", {
        href: c.url, class: "checkpoint-link", dataset: { sha256: c.sha256, name: c.name },
        onclick: (event) => { event.preventDefault(); saveFile(c.url, `${job.id}-${c.name}.pt`).catch(showError); },
      }, c.name)),
      el("td", {}, c.phase), el("td", {}, c.epoch), el("td", {}, c.step), el("td", {}, fmtBytes(c.size)),
      el("td", { class: "mono", title: c.sha256 }, c.sha256.slice(0, 12)))));
  }

  async function loadReport() {
    try {
      renderReport(report, await getJson(`${base}/report`), jobId);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) report.replaceChildren(el("p", { class: "muted" }, "This job has no report."));
      else throw e;
    }
  }

  function onMetric(point) {
    for (const { spec, chart } of byChart) {
      if (!spec.match(point.key)) continue;
      if (spec.id === "nonfinite") {
        nonfiniteSteps.add(`${point.phase}/${point.step}`);
        chart.add("skipped steps", point.step, nonfiniteSteps.size);
      } else {
        chart.add(point.key, point.step, point.value);
      }
    }
  }

  loadJob();
  followMetrics(jobId, { onMetric, onState: () => loadJob(), signal: abort.signal }).catch((e) => {
    if (!abort.signal.aborted) showError(e);
  });
  const timer = setInterval(() => { if (job && !TERMINAL.includes(job.state)) loadJob(); }, REFRESH_MS);
  return () => {
    abort.abort();
    clearInterval(timer);
    byChart.forEach(({ chart }) => chart.destroy());
  };
}
