// Two or more jobs on the same charts: one chart per metric key, one curve per job. Active jobs' new steps
// are fetched every few seconds (GET …/metrics?after=<last step>).

import {get, getAll} from "../api.js";
import {ACTIVE, h, jobLabel, notice, replace, statusBadge} from "../dom.js";
import {ChartCard, PALETTE} from "../charts.js";
import {MetricTable, chartsFor} from "../metrics.js";

const REFRESH_MS = 5000;

export function comparePage({view, query, signal, onLeave}) {
  document.title = "Compare · rlhf-service";
  const ids = [...new Set((query.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean))];
  const runs = ids.map((id, i) => ({id, color: PALETTE[i % PALETTE.length], job: null, table: new MetricTable()}));
  const cards = new Map();  // metric key -> ChartCard
  const legend = h("div.compare-legend");
  const message = h("div");
  const grid = h("div.chart-grid.compare-grid");
  let timer = null;
  let layoutKeys = "";
  onLeave(() => { clearTimeout(timer); for (const card of cards.values()) card.destroy(); });

  replace(view,
    h("div.page-head", h("div", h("div.crumbs", h("a", {href: "#/jobs"}, "Jobs"), " / compare"), h("h1", "Compare jobs"))),
    legend, message, grid);
  if (runs.length < 2) {
    replace(message, notice("info", "Tick two or more jobs in the ", h("a", {href: "#/jobs"}, "jobs table"),
      " to compare them."));
    if (!runs.length) return;
  }
  load();

  async function load() {
    try {
      await Promise.all(runs.map(async (run) => {
        run.job = await get(`/v1/jobs/${run.id}`, undefined, {signal});
        const after = run.table.steps.length ? run.table.steps[run.table.steps.length - 1] : undefined;
        const rows = await getAll(`/v1/jobs/${run.id}/metrics`, {query: {after}, signal});
        for (const m of rows) run.table.add(m.step, m.values);
      }));
    } catch (err) {
      if (!signal.aborted) replace(message, notice("error", err.message));
      return;
    }
    if (runs.length >= 2) replace(message);
    renderLegend();
    draw();
    if (runs.some((run) => ACTIVE.has(run.job.status))) timer = setTimeout(load, REFRESH_MS);
  }

  function renderLegend() {
    replace(legend, runs.map((run) => {
      const swatch = h("span.swatch");
      swatch.style.background = run.color;
      return h("a.legend-item", {href: `#/jobs/${run.id}`, "data-job": run.id}, swatch,
        h("strong", jobLabel(run.job)), h("span.tag", run.job.type), statusBadge(run.job.status),
        h("span.muted", `${run.job.current_step}${run.job.total_steps ? ` / ${run.job.total_steps}` : ""} steps`));
    }));
  }

  function draw() {
    const keys = [...new Set(runs.flatMap((run) => run.table.keys))];
    // The same order as a job page: loss, rewards, KL, policy, ... then the rest.
    const ordered = chartsFor(keys).flatMap((def) => def.series.map((s) => s.key));
    if (ordered.join("\n") !== layoutKeys) {
      layoutKeys = ordered.join("\n");
      for (const key of ordered) {
        if (cards.has(key)) continue;
        const card = new ChartCard({id: key, title: key, syncKey: "compare",
                                    series: runs.map((run) => ({label: jobLabel(run.job), color: run.color}))});
        cards.set(key, card);
      }
      replace(grid, ordered.map((key) => cards.get(key).el));
      if (!ordered.length) replace(message, notice("info", "These jobs have no metrics yet."));
    }
    // One x column: every step any job reported; each job's curve is null where it has no such step.
    const steps = [...new Set(runs.flatMap((run) => run.table.steps))].sort((a, b) => a - b);
    for (const [key, card] of cards) {
      card.setData(steps, runs.map((run) => {
        const column = run.table.column(key);
        const byStep = new Map(run.table.steps.map((s, i) => [s, column[i]]));
        return steps.map((s) => byStep.get(s) ?? null);
      }));
    }
  }
}
