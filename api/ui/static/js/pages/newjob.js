// The new-job form, built from the OpenAPI document (schema.js): pick a type, fill its fields (defaults
// shown, descriptions as help), submit. Only the required fields and those changed from their defaults
// are sent, so the job gets the server's defaults for the rest; a refusal names the field at fault.

import {get, getAll, openapi, post} from "../api.js";
import {h, notice, replace} from "../dom.js";
import {buildBody, fieldsOf, jobTypes} from "../schema.js";

// The dataset kinds each job type trains on (trainers/spec/config.py: dataset_kind, and KTO's
// preference pairs); a type not listed here is offered every dataset.
const KINDS = {sft: ["chat"], dpo: ["preference"], orpo: ["preference"], reward_model: ["preference"],
               kto: ["feedback", "preference"], ppo: ["prompt"], grpo: ["prompt"]};
const FIELD_KINDS = {ptx_dataset_id: ["text"]};

export function newJobPage({view, query, signal}) {
  document.title = "New job · rlhf-service";
  const status = h("div.form-status");
  replace(view, h("div.page-head", h("h1", "New job")), notice("info", "Loading the job schema…"));
  start();

  async function start() {
    let doc, datasets, models;
    try {
      [doc, datasets, models] = await Promise.all([
        openapi(),
        getAll("/v1/datasets", {cursor: (d) => d.id, limit: 100, signal}),
        get("/v1/models", undefined, {signal}).then((r) => r.data).catch(() => []),
      ]);
    } catch (err) {
      if (!signal.aborted) replace(view, notice("error", err.message));
      return;
    }
    const types = jobTypes(doc);
    const preset = datasets.find((d) => d.id === query.get("dataset"));
    let type = query.get("type") || (preset && types.find((t) => (KINDS[t.type] || []).includes(preset.kind))?.type)
      || "dpo";
    if (!types.some((t) => t.type === type)) type = types[0].type;

    const typeSelect = h("select#job-type", {name: "type", onchange: () => render(typeSelect.value)},
      types.map((t) => h("option", {value: t.type}, t.type)));
    const typeHelp = h("p.help");
    const fieldsBox = h("div.form-fields");
    const preview = h("pre.json.preview");
    const submitButton = h("button.button.primary", {type: "submit"}, "Create job");
    const form = h("form.job-form", {onsubmit: submit, oninput: updatePreview, onchange: updatePreview, novalidate: true},
      h("div.card.form-card",
        h("div.field.type-field", h("label", {for: "job-type"}, "Type ", h("span.req", "*")), typeSelect, typeHelp),
        fieldsBox),
      h("aside.card.preview-card", h("header.chart-title", h("h3", "Request"),
        h("span.muted", "POST /v1/jobs: only what differs from the defaults")), preview, status,
        h("div.form-actions", submitButton)));
    replace(view, h("div.page-head", h("h1", "New job")), form);
    let fields = [];
    const inputs = new Map();  // path -> input element
    render(type);

    function render(chosen) {
      type = chosen;
      typeSelect.value = type;
      const entry = types.find((t) => t.type === type);
      replace(typeHelp, entry.description);
      fields = fieldsOf(doc, entry.schema);
      inputs.clear();
      const plain = fields.filter((f) => f.kind !== "object" && f.kind !== "json");
      const mainJson = fields.filter((f) => f.kind === "json" && f.required);
      const objects = fields.filter((f) => f.kind === "object");
      const moreJson = fields.filter((f) => f.kind === "json" && !f.required);
      replace(fieldsBox,
        h("div.field-grid", plain.map(control)),
        mainJson.map(control),
        objects.map((f) => h("fieldset.group", {"data-path": f.path},
          h("legend", f.name), f.description ? h("p.help", f.description) : null,
          h("div.field-grid", f.children.map(control)))),
        moreJson.length ? h("fieldset.group", h("legend", "More"), moreJson.map(control)) : null);
      updatePreview();
    }

    function control(field) {
      let input;
      let options = null;  // base_model's suggestions
      const id = `f-${field.path.replace(/[^\w]/g, "-")}`;
      const common = {id, name: field.path, "data-path": field.path};
      if (field.name.endsWith("dataset_id")) {
        const kinds = FIELD_KINDS[field.name] || KINDS[type];
        const usable = kinds ? datasets.filter((d) => kinds.includes(d.kind)) : datasets;
        input = h("select", common, h("option", {value: ""}, field.required ? "choose a dataset…" : "none"),
          usable.map((d) => h("option", {value: d.id}, `${d.name} · ${d.kind} · ${d.row_count} rows (${d.id})`)));
        if (field.name === "dataset_id" && preset && usable.includes(preset)) input.value = preset.id;
        if (!usable.length) field = {...field, description: `${field.description} No ${kinds.join(" or ")} dataset yet: upload one first.`};
      } else if (field.kind === "enum") {
        input = h("select", common, field.nullable || field.default === undefined ? h("option", {value: ""}, "default") : null,
          field.enum.map((option) => h("option", {value: String(option)}, String(option))));
        input.value = field.default === undefined || field.default === null ? "" : String(field.default);
      } else if (field.kind === "boolean") {
        input = h("input", {...common, type: "checkbox", checked: Boolean(field.default)});
      } else if (field.kind === "number") {
        input = h("input", {...common, type: "number", step: field.integer ? "1" : "any", min: field.min, max: field.max,
                            value: field.default ?? "", placeholder: field.default === null ? "default" : ""});
      } else if (field.kind === "json") {
        const example = field.example === undefined ? "" : JSON.stringify(field.example);
        input = h("textarea", {...common, rows: field.required ? "8" : "2", spellcheck: "false",
                               placeholder: example ? `e.g. ${example}` : "JSON"});
        if (field.required && example) input.value = JSON.stringify(field.example, null, 2);
      } else {
        const list = field.name === "base_model" ? `${id}-options` : null;
        input = h("input", {...common, type: "text", value: field.default ?? "", placeholder: field.example ?? "",
                            list, autocomplete: "off"});
        if (list) {
          // The server's base models (GET /v1/models, owned by "system") as suggestions; any other name works.
          const names = new Set([field.example, ...models.filter((m) => m.owned_by === "system").map((m) => m.id)]);
          options = h("datalist", {id: list}, [...names].filter(Boolean).map((name) => h("option", {value: name})));
        }
      }
      inputs.set(field.path, input);
      return h(`div.field.kind-${field.kind}`, {"data-field": field.path},
        h("label", {for: id}, h("code", field.name), field.required ? h("span.req", " *") : null),
        field.kind === "boolean" ? h("div.check-row", input, h("span.muted", field.default ? "on by default" : "off by default")) : input,
        options,
        field.description ? h("p.help", field.description) : null,
        h("p.field-error"));
    }

    function read(field) {
      const input = inputs.get(field.path);
      if (!input) return undefined;
      return input.type === "checkbox" ? input.checked : input.value;
    }

    function collect() {
      const errors = {};
      const body = {type, ...buildBody(fields, read, errors)};
      return {body, errors};
    }

    function updatePreview() {
      const {body} = collect();
      preview.textContent = JSON.stringify(body, null, 2);
    }

    function showErrors(errors) {
      for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
      for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
      let first = null;
      for (const [path, message] of Object.entries(errors)) {
        const box = fieldBox(path);
        if (!box) continue;
        box.classList.add("invalid");
        box.querySelector(".field-error").textContent = message;
        first ??= box;
      }
      if (first) first.scrollIntoView({block: "center", behavior: "smooth"});
    }

    /** The field a path such as `reward.graders[1].reference` or `hyperparameters.beta` is about. */
    function fieldBox(path) {
      let at = path;
      while (at) {
        const box = form.querySelector(`[data-field="${CSS.escape(at)}"]`);
        if (box) return box;
        at = at.includes(".") || at.includes("[") ? at.replace(/(\.[^.[]*|\[\d+\])$/, "") : "";
      }
      return null;
    }

    async function submit(event) {
      event.preventDefault();
      const {body, errors} = collect();
      showErrors(errors);
      if (Object.keys(errors).length) {
        replace(status, notice("error", "Fix the fields marked in red."));
        return;
      }
      submitButton.disabled = true;
      replace(status, notice("info", "Creating the job…"));
      try {
        const job = await post("/v1/jobs", body, {signal});
        location.hash = `#/jobs/${job.id}`;
      } catch (err) {
        if (signal.aborted) return;
        submitButton.disabled = false;
        replace(status, notice("error", err.param ? h("code", err.param) : null, err.param ? " " : null, err.message));
        const byField = {};
        for (const detail of err.details || []) if (detail.field) byField[detail.field] ??= detail.message;
        if (err.param && !byField[err.param]) byField[err.param] = err.message;
        showErrors(byField);
      }
    }
  }
}
