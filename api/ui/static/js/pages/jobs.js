// The jobs table: filters by status and type (the API's ?status=&type=), cursor paging, a refresh every
// few seconds while a job on the page is active, and checkboxes to compare jobs' curves.

import {get, openapi} from "../api.js";
import {ACTIVE, ago, dateTime, h, notice, replace, statusBadge} from "../dom.js";
import {etaText, progressBar} from "../jobinfo.js";

const PAGE_SIZE = 20;
const REFRESH_MS = 3000;
const FALLBACK_STATUSES = ["queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed", "cancelled"];
const selected = new Set();  // kept while the tab moves between pages

/** The enum of a query parameter of GET /v1/jobs in the OpenAPI document. */
function queryEnum(schema, name) {
  const param = (schema.paths["/v1/jobs"]?.get?.parameters || []).find((p) => p.name === name);
  const options = param ? [param.schema, ...(param.schema.anyOf || [])] : [];
  for (const option of options) {
    if (option?.enum) return option.enum;
    if (option?.$ref) return schema.components.schemas[option.$ref.split("/").pop()]?.enum || null;
  }
  return null;
}

export function jobsPage({view, query, signal, onLeave}) {
  document.title = "Jobs · rlhf-service";
  const filters = {status: query.get("status") || "", type: query.get("type") || ""};
  const cursors = [];  // the `after` of each page before this one
  let after = null;
  let timer = null;
  onLeave(() => clearTimeout(timer));

  const statusSelect = h("select#filter-status", {name: "status", onchange: refilter}, h("option", {value: ""}, "any"));
  const typeSelect = h("select#filter-type", {name: "type", onchange: refilter}, h("option", {value: ""}, "any"));
  const compareButton = h("a.button", {href: "#", onclick: compare}, "Compare");
  const tbody = h("tbody");
  const message = h("div");
  const newer = h("button.button", {type: "button", onclick: () => page(cursors.pop() ?? null, false)}, "← Newer");
  const older = h("button.button", {type: "button", onclick: () => page(tbody.dataset.last, true)}, "Older →");
  const live = h("span.live", {hidden: true}, "auto-refresh");

  replace(view,
    h("div.page-head", h("h1", "Jobs"),
      h("div.actions", compareButton, h("a.button.primary", {href: "#/new"}, "New job"))),
    h("div.toolbar",
      h("label", "Status ", statusSelect), h("label", "Type ", typeSelect), h("span.spacer"), live),
    message,
    h("div.table-wrap", h("table.table.jobs-table",
      h("thead", h("tr", h("th.check", ""), h("th", "Job"), h("th", "Type"), h("th", "Status"), h("th", "Base model"),
        h("th.progress-col", "Progress"), h("th", "ETA"), h("th", "Created"))),
      tbody)),
    h("div.pager", newer, older));
  updateCompare();

  openapi().then((schema) => {
    fill(statusSelect, queryEnum(schema, "status") || FALLBACK_STATUSES, filters.status);
    fill(typeSelect, queryEnum(schema, "type") || [], filters.type);
  }).catch(() => fill(statusSelect, FALLBACK_STATUSES, filters.status));
  page(null, null);

  function fill(select, values, current) {
    for (const value of values) select.append(h("option", {value}, value));
    select.value = current;
  }

  function refilter() {
    filters.status = statusSelect.value;
    filters.type = typeSelect.value;
    const params = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, "", `#/jobs${params.size ? `?${params}` : ""}`);
    cursors.length = 0;
    page(null, null);
  }

  /** Load the page after `cursor`; forward says whether to remember the current one for "Newer". */
  async function page(cursor, forward) {
    clearTimeout(timer);
    if (forward) cursors.push(after);
    after = cursor;
    await load();
  }

  async function load() {
    clearTimeout(timer);
    let result;
    try {
      result = await get("/v1/jobs", {...filters, limit: PAGE_SIZE, after}, {signal});
    } catch (err) {
      if (signal.aborted) return;
      replace(message, notice("error", err.message));
      timer = setTimeout(load, REFRESH_MS * 3);
      return;
    }
    replace(message);
    replace(tbody, result.data.map(row));
    if (!result.data.length) {
      replace(tbody, h("tr", h("td.empty", {colspan: "8"}, filters.status || filters.type
        ? "No job matches these filters." : "No jobs yet. ", h("a", {href: "#/new"}, "Start one"))));
    }
    tbody.dataset.last = result.data.length ? result.data[result.data.length - 1].id : "";
    newer.disabled = !cursors.length;
    older.disabled = !result.has_more;
    const active = result.data.some((job) => ACTIVE.has(job.status));
    live.hidden = !active;
    if (active) timer = setTimeout(load, REFRESH_MS);
  }

  function row(job) {
    const box = h("input", {type: "checkbox", checked: selected.has(job.id), "aria-label": `select ${job.id}`,
                            onchange: () => { box.checked ? selected.add(job.id) : selected.delete(job.id); updateCompare(); }});
    return h("tr", {"data-job": job.id, "data-status": job.status},
      h("td.check", box),
      h("td", h("a.job-link", {href: `#/jobs/${job.id}`}, job.name || job.id),
        job.name ? h("div.sub.mono", job.id) : null),
      h("td", h("span.tag", job.type)),
      h("td", statusBadge(job.status), job.error ? h("div.sub.error-text", {title: job.error.message},
        job.error.type.replace("_", " ")) : null),
      h("td.mono.model", {title: job.base_model}, job.base_model),
      h("td", progressBar(job)),
      h("td.nowrap", etaText(job)),
      h("td.nowrap", {title: dateTime(job.created_at)}, ago(job.created_at)));
  }

  function updateCompare() {
    compareButton.textContent = `Compare (${selected.size})`;
    compareButton.classList.toggle("disabled", selected.size < 2);
    compareButton.title = selected.size < 2 ? "Tick two or more jobs to compare their curves" : "";
  }

  function compare(event) {
    event.preventDefault();
    if (selected.size >= 2) location.hash = `#/compare?ids=${[...selected].join(",")}`;
  }
}
