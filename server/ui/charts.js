// Line charts of metric series against the optimizer step, drawn with uPlot (vendor/uPlot.iife.min.js,
// loaded by index.html as the global `uPlot`). Points arrive one at a time; the chart redraws at most every
// REDRAW_MS and rebuilds itself when a new series appears.

const REDRAW_MS = 250;
// Tick spacings of the step axis: whole steps only.
const STEP_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563"];

export class MetricChart {
  // title: shown above the chart; yLabel: the y axis; xLabel: the x axis (default "step")
  constructor(container, { title, yLabel = "", xLabel = "step", logY = false }) {
    this.box = document.createElement("figure");
    this.box.className = "chart";
    this.box.dataset.points = "0";
    this.box.dataset.title = title;
    const caption = document.createElement("figcaption");
    caption.textContent = title;
    this.plotHost = document.createElement("div");
    this.empty = document.createElement("p");
    this.empty.className = "muted";
    this.empty.textContent = "no points yet";
    this.box.append(caption, this.plotHost, this.empty);
    container.append(this.box);
    this.options = { yLabel, xLabel, logY };
    this.series = new Map(); // name -> Map(x -> y)
    this.count = 0;
    this.plot = null;
    this.plotSeries = [];
    this.timer = null;
  }

  // Add one point of series `name` (a later point at the same x replaces the earlier one).
  add(name, x, y) {
    if (!this.series.has(name)) this.series.set(name, new Map());
    this.series.get(name).set(x, y === null || Number.isFinite(y) ? y : null);
    this.count += 1;
    this.box.dataset.points = String(this.count);
    if (!this.timer) this.timer = setTimeout(() => this.redraw(), REDRAW_MS);
  }

  data() {
    const xs = [...new Set([...this.series.values()].flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
    return [xs, ...[...this.series.values()].map((m) => xs.map((x) => (m.has(x) ? m.get(x) : null)))];
  }

  redraw() {
    this.timer = null;
    const names = [...this.series.keys()];
    if (!names.length) return;
    this.empty.hidden = true;
    const data = this.data();
    if (this.plot && names.length === this.plotSeries.length) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.plotSeries = names;
    const width = Math.max(320, this.box.clientWidth || 480);
    this.plot = new uPlot({
      width, height: 220,
      scales: { x: { time: false }, y: this.options.logY ? { distr: 3 } : {} },
      axes: [
        { label: this.options.xLabel, incrs: STEP_INCREMENTS },
        { label: this.options.yLabel, size: 60, values: (u, ticks) => ticks.map((v) => (v === null ? "" : Number(v.toPrecision(3)).toString())) },
      ],
      series: [{ label: this.options.xLabel }, ...names.map((name, i) => ({
        label: name, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true, points: { size: 4 },
      }))],
      legend: { live: true },
    }, data, this.plotHost);
  }

  destroy() {
    clearTimeout(this.timer);
    if (this.plot) this.plot.destroy();
    this.box.remove();
  }
}

// The charts of one job page, and which metric keys feed which chart.
export const JOB_CHARTS = [
  { id: "loss", title: "Loss terms", yLabel: "loss", logY: false,
    match: (k) => k === "train/loss" || k.startsWith("train/loss_") || k === "val/loss" || k === "train/epoch_loss" },
  { id: "k_acc", title: "K accuracy", yLabel: "K_acc", match: (k) => k === "train/k_acc" || k.startsWith("val/k_acc") },
  { id: "lr", title: "Learning rate", yLabel: "lr", match: (k) => k === "train/lr" },
  { id: "grad", title: "Gradient norm", yLabel: "‖g‖", match: (k) => k === "train/grad_norm" },
  { id: "nonfinite", title: "Non-finite steps skipped (cumulative)", yLabel: "steps", match: (k) => k.startsWith("nonfinite/cause/") },
];
