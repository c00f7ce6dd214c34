// Submit a job from a preset or a pasted JSON config. A 422 from the API is shown at the fields it names:
// top-level fields under their inputs, `config.*` fields in a list under the config.

import { ApiError, postJson } from "./api.js";
import { KINDS, el, problemText } from "./util.js";

const FORM_FIELDS = ["kind", "name", "preset", "max_attempts", "config"];

export function renderSubmit(view) {
  const kind = el("select", { name: "kind", id: "submit-kind" }, KINDS.map((k) => el("option", { value: k }, k)));
  const preset = el("select", { name: "preset", id: "submit-preset" },
    el("option", { value: "quickstart" }, "quickstart (about two minutes on a CPU)"), el("option", { value: "" }, "none: use the config below"));
  const name = el("input", { name: "name", id: "submit-name", maxlength: 200, placeholder: "optional label" });
  const attempts = el("input", { name: "max_attempts", id: "submit-attempts", type: "number", min: 1, max: 5, placeholder: "2" });
  const config = el("textarea", { name: "config", id: "submit-config", rows: 14, spellcheck: false,
    placeholder: '{"phases": [...], "data": {...}}  (empty: the kind\'s defaults; evaluation needs {"checkpoint": ...})' });
  const errors = Object.fromEntries(FORM_FIELDS.map((f) => [f, el("div", { class: "field-error", id: `error-${f}` })]));
  const configErrors = el("ul", { class: "field-errors", id: "config-errors" });
  const general = el("p", { class: "error", id: "submit-error", hidden: true });

  function syncPreset() {
    preset.disabled = kind.value !== "diagnostic";
    if (preset.disabled) preset.value = "";
  }
  kind.addEventListener("change", syncPreset);
  config.addEventListener("input", () => { if (config.value.trim()) preset.value = ""; });

  function clearErrors() {
    Object.values(errors).forEach((e) => { e.textContent = ""; });
    configErrors.replaceChildren();
    general.hidden = true;
    view.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
  }

  function showFieldError(field, message) {
    const top = field.split(".")[0];
    if (top === "config" && field !== "config") {
      configErrors.append(el("li", {}, el("code", {}, field.slice("config.".length)), `: ${message}`));
      config.classList.add("invalid");
    } else if (errors[top]) {
      errors[top].textContent = message;
      view.querySelector(`[name="${top}"]`)?.classList.add("invalid");
    } else {
      general.textContent = `${field}: ${message}`;
      general.hidden = false;
    }
  }

  async function submit(event) {
    event.preventDefault();
    clearErrors();
    const body = { kind: kind.value };
    if (name.value.trim()) body.name = name.value.trim();
    if (attempts.value) body.max_attempts = Number(attempts.value);
    if (preset.value) body.preset = preset.value;
    if (config.value.trim()) {
      try {
        body.config = JSON.parse(config.value);
      } catch (e) {
        showFieldError("config", `not valid JSON: ${e.message}`);
        return;
      }
    }
    try {
      const job = await postJson("/v1/jobs", body);
      window.location.hash = `#/job/${job.id}`;
    } catch (e) {
      if (e instanceof ApiError && e.problem.errors?.length) e.problem.errors.forEach((f) => showFieldError(f.field, f.message));
      else { general.textContent = problemText(e); general.hidden = false; }
    }
  }

  const row = (label, input, error) => el("label", { class: "field" }, el("span", {}, label), input, error);
  view.append(
    el("h1", {}, "Submit a job"),
    el("form", { id: "submit-form", onsubmit: submit },
      row("kind", kind, errors.kind),
      row("preset", preset, errors.preset),
      row("name", name, errors.name),
      row("max attempts", attempts, errors.max_attempts),
      row("config (JSON)", config, errors.config),
      configErrors, general,
      el("button", { type: "submit", id: "submit-button" }, "Submit")),
  );
  syncPreset();
  return null;
}
