// Overlay 2-5 runs on one chart: one series per job for the chosen metric key, against the step.

import { getJson } from "./api.js";
import { MetricChart } from "./charts.js";
import { el, problemText } from "./util.js";

const MAX_RUNS = 5;
const DEFAULT_KEYS = ["train/loss", "train/epoch_loss", "train/k_acc", "val/k_acc", "val/loss", "train/lr", "train/grad_norm"];

async function points(jobId, key) {
  const out = [];
  let since = 0;
  for (;;) {
    const page = await getJson(`/v1/jobs/${encodeURIComponent(jobId)}/metrics`, { since_seq: since, keys: key, limit: 10000 });
    out.push(...page.points);
    if (page.next_since_seq === null || page.next_since_seq === undefined) return out;
    since = page.next_since_seq;
  }
}

export function renderCompare(view, ids) {
  const runs = ids.slice(0, MAX_RUNS);
  const keySelect = el("select", { id: "compare-key" }, DEFAULT_KEYS.map((k) => el("option", { value: k }, k)));
  const idsInput = el("input", { id: "compare-ids", value: runs.join(","), size: 80, placeholder: "job ids, comma-separated (2-5)" });
  const host = el("div", { class: "charts" });
  const error = el("p", { class: "error", hidden: true });
  let chart = null;

  async function draw() {
    error.hidden = true;
    if (chart) chart.destroy();
    chart = new MetricChart(host, { title: keySelect.value, yLabel: keySelect.value });
    try {
      const jobs = await Promise.all(runs.map((id) => getJson(`/v1/jobs/${encodeURIComponent(id)}`)));
      const series = await Promise.all(runs.map((id) => points(id, keySelect.value)));
      jobs.forEach((job, i) => {
        const label = `${job.name || "job"} ${job.id.slice(0, 8)}`;
        for (const p of series[i]) chart.add(label, p.step, p.value);
      });
    } catch (e) {
      error.textContent = problemText(e);
      error.hidden = false;
    }
  }

  keySelect.addEventListener("change", draw);
  view.append(
    el("h1", {}, "Compare runs"),
    el("form", { class: "toolbar", onsubmit: (e) => {
      e.preventDefault();
      window.location.hash = `#/compare?ids=${idsInput.value.split(",").map((s) => s.trim()).filter(Boolean).join(",")}`;
    } }, idsInput, el("button", { type: "submit" }, "Show"), keySelect),
    el("p", { class: "muted" }, "Select 2-5 jobs in the job list, or paste their ids."),
    error, host,
  );
  if (runs.length) draw();
  return () => { if (chart) chart.destroy(); };
}
