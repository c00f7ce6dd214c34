// A job's report: the diagnostic verdict and its checks table, an evaluation's tables by SNR / K / range with
// the K confusion matrix, any other report as key/value tables; then the plots and files the job wrote.

import { blobUrl, saveFile } from "./api.js";
import { el, fmtBytes, fmtNumber } from "./util.js";

// Columns of an evaluation table: [header, MethodMetrics field].
const METHOD_COLUMNS = [
  ["K_acc", "k_acc"], ["K_under", "k_under"], ["K_over", "k_over"], ["RMSE φ °", "rmse_azimuth_deg"],
  ["RMSE θ °", "rmse_elevation_deg"], ["RMSE r m", "rmse_range_m"], ["P", "precision"], ["R", "recall"],
  ["F1", "f1"], ["φ/√CRB", "crb_ratio_azimuth"], ["outliers", "outlier_share"],
];

function verdict(report) {
  const v = report.verdict;
  return [
    el("p", { class: `verdict status-${v.status.toLowerCase()}`, id: "verdict" },
      el("strong", {}, `Verdict: ${v.status}`), ` — ${v.decision}`),
    v.reasons?.length ? el("ul", {}, v.reasons.map((r) => el("li", {}, r))) : null,
    el("table", { id: "checks" },
      el("thead", {}, el("tr", {}, ["#", "check", "status", "summary", "next step"].map((h) => el("th", {}, h)))),
      el("tbody", {}, report.checks.map((c) => el("tr", {},
        el("td", {}, c.id), el("td", {}, c.name),
        el("td", {}, el("span", { class: `status-${c.status.toLowerCase()}` }, c.status)),
        el("td", {}, c.summary), el("td", {}, c.next_step || ""))))),
  ];
}

function binTable(table) {
  return [
    el("h4", {}, `${table.label} (${table.n_scenes} ${table.counts || "scenes"})`),
    el("table", { class: "evaluation" },
      el("thead", {}, el("tr", {}, el("th", {}, "method"), METHOD_COLUMNS.map(([h]) => el("th", {}, h)))),
      el("tbody", {}, table.methods.map((m) => el("tr", {},
        el("td", {}, m.method), METHOD_COLUMNS.map(([, f]) => el("td", {}, fmtNumber(m[f], 3))))))),
  ];
}

function evaluation(report) {
  const c = report.k_confusion;
  return [
    el("p", {}, `Methods: ${report.methods.join(", ")}`),
    ...[["By SNR", report.by_snr], ["By number of sources K", report.by_k], ["By true range", report.by_range]]
      .map(([title, tables]) => el("details", { open: title === "By SNR" }, el("summary", {}, title), tables.map(binTable))),
    el("details", {}, el("summary", {}, "K confusion matrix (rows: true K, columns: estimated K)"),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "true \\ est"), c.predicted_k.map((k) => el("th", {}, k)))),
        el("tbody", {}, c.true_k.map((t, i) => el("tr", {}, el("th", {}, t), c.counts[i].map((n) => el("td", {}, n))))))),
  ];
}

function generic(value) {
  if (value === null || typeof value !== "object") return el("span", {}, fmtNumber(value));
  if (Array.isArray(value)) return el("ul", {}, value.map((v) => el("li", {}, generic(v))));
  return el("table", { class: "kv" }, el("tbody", {}, Object.entries(value).map(([k, v]) =>
    el("tr", {}, el("th", {}, k), el("td", {}, generic(v))))));
}

function artifacts(list, jobId) {
  const figures = el("div", { class: "artifacts", id: "artifacts" });
  for (const a of list) {
    const path = a.url || `/v1/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(a.name)}`;
    if (a.media_type === "image/png") {
      const img = el("img", { alt: a.name, dataset: { name: a.name } });
      blobUrl(path).then((url) => { img.src = url; });
      figures.append(el("figure", {}, img, el("figcaption", {}, a.name)));
    } else {
      figures.append(el("p", {}, el("a", { href: path, onclick: (e) => { e.preventDefault(); saveFile(path, a.name); } },
        a.name), ` (${fmtBytes(a.size)})`));
    }
  }
  return figures;
}

export function renderReport(container, report, jobId) {
  const parts = [];
  if (report.kind === "diagnostic" && report.verdict) parts.push(...verdict(report));
  else if (report.kind === "evaluation" && report.by_snr) parts.push(...evaluation(report));
  else {
    const rest = Object.fromEntries(Object.entries(report).filter(([k]) => k !== "artifacts"));
    parts.push(generic(rest));
  }
  if (report.artifacts?.length) parts.push(el("h3", {}, "Plots and files"), artifacts(report.artifacts, jobId));
  container.replaceChildren(...parts.filter(Boolean));
}
