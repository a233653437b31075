// Datasets: the project's list, and one dataset with its rows as stored (GET /v1/datasets/{id}/rows),
// its kind, row count and the rows left out at upload (skip_invalid).

import {get} from "../api.js";
import {ago, bytes, dateTime, h, notice, replace} from "../dom.js";

const PAGE_SIZE = 25;
const ROWS_PAGE = 20;

export function datasetsPage({view, signal}) {
  document.title = "Datasets · rlhf-service";
  const tbody = h("tbody");
  const message = h("div");
  const cursors = [];
  let after = null;
  const newer = h("button.button", {type: "button", onclick: () => { after = cursors.pop() ?? null; load(); }}, "← Newer");
  const older = h("button.button", {type: "button", onclick: () => { cursors.push(after); after = tbody.dataset.last; load(); }},
    "Older →");
  replace(view,
    h("div.page-head", h("h1", "Datasets"),
      h("div.actions", h("span.muted", "Upload with ", h("code", "POST /v1/datasets"), " (see the ",
        h("a", {href: "../docs#/datasets", target: "_blank", rel: "noopener"}, "API docs"), ")"))),
    message,
    h("div.table-wrap", h("table.table.datasets-table",
      h("thead", h("tr", h("th", "Dataset"), h("th", "Kind"), h("th.num", "Rows"), h("th.num", "Skipped"),
        h("th", "File"), h("th.num", "Size"), h("th", "Created"))), tbody)),
    h("div.pager", newer, older));
  load();

  async function load() {
    let page;
    try {
      page = await get("/v1/datasets", {limit: PAGE_SIZE, after}, {signal});
    } catch (err) {
      if (!signal.aborted) replace(message, notice("error", err.message));
      return;
    }
    replace(tbody, page.data.map((d) => h("tr", {"data-dataset": d.id},
      h("td", h("a", {href: `#/datasets/${d.id}`}, d.name), h("div.sub.mono", d.id)),
      h("td", h("span.tag", d.kind)),
      h("td.num", d.row_count.toLocaleString("en-US")),
      h("td.num", d.skipped ? d.skipped.count.toLocaleString("en-US") : "0"),
      h("td.mono", `${d.filename}`),
      h("td.num", bytes(d.size_bytes)),
      h("td.nowrap", {title: dateTime(d.created_at)}, ago(d.created_at)))));
    if (!page.data.length) {
      replace(tbody, h("tr", h("td.empty", {colspan: "7"}, "No datasets yet: upload one with POST /v1/datasets.")));
    }
    tbody.dataset.last = page.data.length ? page.data[page.data.length - 1].id : "";
    newer.disabled = !cursors.length;
    older.disabled = !page.has_more;
  }
}

export function datasetPage({view, params: [datasetId], signal}) {
  document.title = `${datasetId} · rlhf-service`;
  const columns = [];  // the row keys seen so far, in order of first appearance
  const head = h("tr");
  const rowsBody = h("tbody");
  const more = h("button.button", {type: "button", onclick: () => loadRows()}, "More rows");
  let after = null;
  start();

  async function start() {
    let dataset;
    try {
      dataset = await get(`/v1/datasets/${datasetId}`, undefined, {signal});
    } catch (err) {
      if (!signal.aborted) replace(view, notice("error", err.message), h("p", h("a", {href: "#/datasets"}, "Back to the datasets")));
      return;
    }
    document.title = `${dataset.name} · rlhf-service`;
    const skipped = dataset.skipped && dataset.skipped.count ? dataset.skipped : null;
    replace(view,
      h("div.head-card",
        h("div.crumbs", h("a", {href: "#/datasets"}, "Datasets"), " / ", h("span.mono", dataset.id)),
        h("div.title-row", h("h1", dataset.name), h("span.tag", dataset.kind), h("span.spacer"),
          h("a.button.primary", {href: `#/new?dataset=${dataset.id}`}, "Train on it")),
        h("dl.facts",
          fact("Kind", dataset.kind),
          fact("Rows", dataset.row_count.toLocaleString("en-US")),
          fact("Skipped at upload", skipped ? skipped.count.toLocaleString("en-US") : "0"),
          fact("File", h("span.mono", dataset.filename)), fact("Format", dataset.format),
          fact("Size", bytes(dataset.size_bytes)), fact("Created", dateTime(dataset.created_at)),
          dataset.column_map ? fact("Column map", h("span.mono", JSON.stringify(dataset.column_map))) : null)),
      skipped ? h("section.card.skipped", h("header.chart-title", h("h3", `Rows left out at upload (${skipped.count})`),
        skipped.count > skipped.rows.length ? h("span.muted", `the first ${skipped.rows.length}`) : null),
        h("div.table-wrap", h("table.table",
          h("thead", h("tr", h("th.num", "Line"), h("th", "Field"), h("th", "Problem"))),
          h("tbody", skipped.rows.map((p) => h("tr", h("td.num", String(p.line)), h("td.mono", p.field || "–"),
            h("td", p.message))))))) : null,
      h("h2", "Rows ", h("span.muted", "as stored (normalised), in file order")),
      h("div.table-wrap", h("table.table.rows-table", h("thead", head), rowsBody)),
      h("div.pager", more));
    loadRows();
  }

  async function loadRows() {
    more.disabled = true;
    let page;
    try {
      page = await get(`/v1/datasets/${datasetId}/rows`, {limit: ROWS_PAGE, after}, {signal});
    } catch (err) {
      if (!signal.aborted) replace(rowsBody, h("tr", h("td", notice("error", err.message))));
      return;
    }
    for (const row of page.data) for (const key of Object.keys(row.data)) if (!columns.includes(key)) columns.push(key);
    replace(head, h("th.num", "#"), h("th.num", "Line"), columns.map((key) => h("th", key)));
    for (const row of page.data) {
      rowsBody.append(h("tr", {"data-idx": String(row.idx)}, h("td.num", String(row.idx)), h("td.num.muted", String(row.line)),
        columns.map((key) => h("td.text-cell", key in row.data ? h("pre.text", show(row.data[key])) : ""))));
    }
    if (page.data.length) after = page.data[page.data.length - 1].idx;
    more.disabled = !page.has_more;
    more.hidden = !page.has_more;
  }
}

/** A stored value as text: strings as they are, chat messages one per line, anything else as JSON. */
function show(value) {
  if (typeof value === "string") return value;
  if (Array.isArray(value) && value.every((m) => m && typeof m === "object" && "role" in m && "content" in m)) {
    return value.map((m) => `${m.role}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`).join("\n");
  }
  return JSON.stringify(value, null, 2);
}

function fact(label, value) {
  return h("div.fact", h("dt", label), h("dd", value));
}
