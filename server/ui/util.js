// Small DOM and formatting helpers shared by the views.

// el("td", {class: "x", dataset: {id: 1}}, "text", child): an element with attributes and children.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  if (Number.isInteger(value)) return String(value);
  return value.toPrecision(digits).replace(/\.?0+(e|$)/, "$1");
}

export function fmtTime(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString();
}

export function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export function stateBadge(state) {
  return el("span", { class: `state state-${state.toLowerCase()}` }, state);
}

export const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
export const STATES = ["QUEUED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED"];
export const KINDS = ["diagnostic", "training", "evaluation"];

// A message for an API error (problem+json): the detail and each field error.
export function problemText(error) {
  const p = error.problem || {};
  const fields = (p.errors || []).map((e) => `${e.field}: ${e.message}`);
  return [p.detail || error.message, ...fields].join("\n");
}
