// The job list: state and kind filters, paging, live refresh, and a selection to compare 2-5 runs.

import { getJson } from "./api.js";
import { KINDS, STATES, el, fmtTime, problemText, stateBadge } from "./util.js";

const REFRESH_MS = 2000;
const PAGE_SIZE = 25;

export function renderJobs(view) {
  const selected = new Set();
  const filters = { state: "", kind: "" };
  let tokens = [null]; // page tokens of the pages shown so far (one per "More")
  const stateSelect = el("select", { id: "filter-state", onchange: () => { filters.state = stateSelect.value; reset(); } },
    el("option", { value: "" }, "any state"), STATES.map((s) => el("option", { value: s }, s)));
  const kindSelect = el("select", { id: "filter-kind", onchange: () => { filters.kind = kindSelect.value; reset(); } },
    el("option", { value: "" }, "any kind"), KINDS.map((k) => el("option", { value: k }, k)));
  const compare = el("button", { id: "compare", disabled: true, onclick: () => {
    window.location.hash = `#/compare?ids=${[...selected].join(",")}`;
  } }, "Compare selected");
  const body = el("tbody");
  const more = el("button", { id: "more", hidden: true, onclick: () => { tokens.push(more.dataset.token); refresh(); } }, "More");
  const error = el("p", { class: "error", hidden: true });
  view.append(
    el("h1", {}, "Jobs"),
    el("div", { class: "toolbar" }, stateSelect, kindSelect, compare, el("a", { href: "#/submit", class: "button" }, "Submit a job")),
    error,
    el("table", { class: "jobs", id: "jobs" },
      el("thead", {}, el("tr", {}, ["", "name", "kind", "state", "progress", "created", "id"].map((h) => el("th", {}, h)))),
      body),
    more,
  );

  function row(job) {
    const box = el("input", { type: "checkbox", checked: selected.has(job.id), onchange: () => {
      if (box.checked) selected.add(job.id); else selected.delete(job.id);
      compare.disabled = selected.size < 2 || selected.size > 5;
    } });
    const pct = Math.round(100 * job.progress.fraction);
    return el("tr", { dataset: { id: job.id, state: job.state } },
      el("td", {}, box),
      el("td", {}, el("a", { href: `#/job/${job.id}` }, job.name || "(unnamed)")),
      el("td", {}, job.kind),
      el("td", {}, stateBadge(job.state)),
      el("td", {}, el("progress", { max: 100, value: pct }), ` ${pct}%`),
      el("td", {}, fmtTime(job.created_at)),
      el("td", { class: "mono" }, job.id.slice(0, 8)));
  }

  let generation = 0; // a refresh started before a filter change must not draw over a later one

  async function refresh() {
    const mine = ++generation;
    try {
      const rows = [];
      let next = null;
      for (const token of tokens) {
        const page = await getJson("/v1/jobs", { state: filters.state, kind: filters.kind, limit: PAGE_SIZE, page_token: token });
        rows.push(...page.items);
        next = page.next_page_token;
      }
      if (mine !== generation) return;
      body.replaceChildren(...rows.map(row));
      more.hidden = !next;
      if (next) more.dataset.token = next;
      error.hidden = true;
    } catch (e) {
      error.textContent = problemText(e);
      error.hidden = false;
    }
  }

  function reset() {
    tokens = [null];
    refresh();
  }

  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}
