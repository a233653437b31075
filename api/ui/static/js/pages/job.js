// One job, live: its header (status, progress, pace, ETA, cancel/pause/resume), its curves, samples,
// events and checkpoints. Events and checkpoints come from their paged lists; the metrics and samples of
// a job that will stream come from the stream itself, which replays them from the first (its Last-Event-ID
// starts their cursors at 0), so they are not read twice; those of an ended or paused job, whose stream is
// closed, come from GET …/metrics and /samples. The stream keeps everything current until the job ends or pauses.

import {ApiError, get, getAll, post} from "../api.js";
import {ACTIVE, dateTime, duration, h, notice, number, replace, statusBadge} from "../dom.js";
import {MetricCharts} from "../charts.js";
import {actionsFor, advance, etaText, isEnded, paceOf, progressBar, tookOf} from "../jobinfo.js";
import {MetricTable, chartsFor} from "../metrics.js";
import {followStream} from "../sse.js";
import {CheckpointsPanel, EventsPanel, SamplesPanel} from "./job_panels.js";

// The server closes a job's stream once it reaches one of these; a resume opens it again.
const CLOSING = new Set(["succeeded", "failed", "cancelled", "paused"]);
const RL_TYPES = new Set(["ppo", "grpo"]);
const POLL_MS = 5000;

/** The charts shown first, side by side (with the samples, for PPO and GRPO). */
function overviewIds(type, defs) {
  const present = new Set(defs.map((d) => d.id));
  const wanted = RL_TYPES.has(type) ? [["reward", "objective", "graders"], ["kl"], ["loss"]]
    : [["loss"], ["rewards", "accuracies"], ["margins", "kl", "token_accuracy"]];
  const ids = wanted.map((options) => options.find((id) => present.has(id))).filter(Boolean);
  return new Set(RL_TYPES.has(type) ? ids.slice(0, 2) : ids);
}

export function jobPage({view, params: [jobId], signal, onLeave}) {
  document.title = `${jobId} · rlhf-service`;
  const table = new MetricTable();
  const samples = new SamplesPanel();
  const charts = new MetricCharts({table, syncKey: `job-${jobId}`, onPick: (step) => samples.pick(step)});
  const events = new EventsPanel();
  const checkpoints = new CheckpointsPanel();
  let job = null;
  let stream = null;
  let poll = null;
  let layoutKeys = "";
  let lastEventId = 0;
  let resumeFrom = null;  // the Last-Event-ID of a stream that closed (the job paused): a resume goes on from it
  onLeave(() => { if (stream) stream.close(); clearTimeout(poll); charts.destroy(); });

  const head = h("div.job-head");
  const actionStatus = h("div");
  const liveBadge = h("span.live-state", {"data-state": "idle"});
  const overview = h("div.overview");
  const groups = h("div.chart-groups");
  const groupSections = new Map();
  const chartsMessage = h("div");
  const hint = h("span.muted.hint-inline", "Hover to compare steps across charts · drag to zoom, double-click to reset");
  replace(view, head, actionStatus,
    h("div.section-head", h("h2", "Training curves"), liveBadge, hint),
    chartsMessage, overview, groups,
    h("div.lower", checkpoints.el, events.el));
  replace(chartsMessage, notice("info", "Loading metrics…"));

  start();

  async function start() {
    try {
      job = await get(`/v1/jobs/${jobId}`, undefined, {signal});
    } catch (err) {
      if (!signal.aborted) replace(view, notice("error", err.message), h("p", h("a", {href: "#/jobs"}, "Back to the jobs")));
      return;
    }
    document.title = `${job.name || job.id} · rlhf-service`;
    if (RL_TYPES.has(job.type)) hint.append(" · click a step for its samples");
    renderHead();
    const streamed = !CLOSING.has(job.status);
    const loads = [
      getAll(`/v1/jobs/${jobId}/events`, {signal, cursor: (e) => e.id, limit: 500}).then((rows) => {
        for (const e of rows) { events.add(e); lastEventId = Math.max(lastEventId, e.id); }
      }),
      loadCheckpoints(),
    ];
    if (streamed) {
      replace(chartsMessage, noMetrics());
    } else {
      loads.push(getAll(`/v1/jobs/${jobId}/metrics`, {signal, onPage: (rows) => {
        for (const m of rows) table.add(m.step, m.values);
        layout();
      }}).then(() => {
        if (!table.steps.length) replace(chartsMessage, noMetrics());
      }));
      if (RL_TYPES.has(job.type)) loads.push(loadSamples());
    }
    try {
      await Promise.all(loads);
    } catch (err) {
      if (signal.aborted) return;
      replace(chartsMessage, notice("error", err.message));
    }
    if (signal.aborted) return;
    openStream();
    schedulePoll();
  }

  async function loadCheckpoints() {
    checkpoints.set(await getAll(`/v1/jobs/${jobId}/checkpoints`, {signal}));
  }

  async function loadSamples() {
    try {
      await getAll(`/v1/jobs/${jobId}/samples`, {signal, limit: 100, onPage: (rows) => {
        for (const s of rows) samples.add(s.step, s.rows);
      }});
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;  // a server without samples
    }
  }

  function openStream() {
    if (CLOSING.has(job.status) || stream) return;
    // Events up to lastEventId are shown already; metrics and samples come from the start (they replace by step).
    stream = followStream(`/v1/jobs/${jobId}/stream`, {
      lastEventId: resumeFrom || `${lastEventId}-0`,
      isFinished: () => CLOSING.has(job.status),
      onState: (state) => {
        liveBadge.dataset.state = state;
        liveBadge.textContent = {open: "live", reconnecting: "reconnecting…", closed: ""}[state] || "";
        if (state === "closed") { resumeFrom = stream.lastEventId || resumeFrom; stream = null; }
      },
      onError: (err) => replace(chartsMessage, notice("error", `Live updates stopped: ${err.message}`)),
      onEvent,
    });
  }

  function onEvent({type, data, id}) {
    const eventId = Number(String(id).split("-")[0]);
    if (type === "metrics") {
      table.add(data.step, data.values);
      if (advance(job, data.step)) renderProgress();
      layout();
    } else if (type === "samples") {
      samples.add(data.step, data.rows);
    } else if (type === "status") {
      job.status = data.status || job.status;
      events.add({id: eventId, type, level: data.status === "failed" ? "error" : "info", message: data.message,
                  created_at: new Date().toISOString()});
      refreshJob();
    } else if (type === "checkpoint") {
      events.add({id: eventId, type, level: "info", message: `checkpoint at step ${data.step}`,
                  created_at: new Date().toISOString()});
      loadCheckpoints().catch(() => {});
    } else if (type === "event") {
      events.add({id: eventId, type, level: data.level, message: data.message, created_at: new Date().toISOString()});
    }
  }

  /** Place a card for each chart the metric keys call for: the overview first, then by group. */
  function layout() {
    if (table.steps.length) replace(chartsMessage);
    const keys = table.keys.sort().join("\n");
    if (keys !== layoutKeys) {
      layoutKeys = keys;
      const defs = chartsFor(table.keys);
      const first = overviewIds(job.type, defs);
      const overviewCards = [];
      for (const def of defs) {
        const card = charts.card(def);
        if (first.has(def.id)) { overviewCards.push(card.el); continue; }
        if (!groupSections.has(def.group)) {
          const grid = h("div.chart-grid");
          groupSections.set(def.group, grid);
          groups.append(h("section.chart-group", {"data-group": def.group}, h("h2", def.group), grid));
        }
        groupSections.get(def.group).append(card.el);
      }
      replace(overview, overviewCards, RL_TYPES.has(job.type) ? samples.el : null);
    }
    charts.update();
  }

  async function refreshJob() {
    try {
      job = await get(`/v1/jobs/${jobId}`, undefined, {signal});
    } catch {
      return;
    }
    renderHead();
    if (!CLOSING.has(job.status)) openStream();
  }

  function schedulePoll() {
    clearTimeout(poll);
    // The job object carries the pace and ETA; the stream carries everything else.
    if (ACTIVE.has(job.status)) poll = setTimeout(async () => { await refreshJob(); schedulePoll(); }, POLL_MS);
  }

  async function act(action) {
    replace(actionStatus);
    try {
      job = await post(`/v1/jobs/${jobId}/${action}`, undefined, {signal});
      renderHead();
      openStream();  // a resumed job streams again, from where its last stream stopped
      schedulePoll();
    } catch (err) {
      replace(actionStatus, notice("error", `${action} refused: ${err.message}`));
      refreshJob();
    }
  }

  function stepText() {
    return job.total_steps ? `${job.current_step} of ${job.total_steps}` : String(job.current_step);
  }

  function renderProgress() {
    const slot = head.querySelector(".head-progress");
    if (slot) replace(slot, progressBar(job));
    const step = head.querySelector("[data-step]");
    if (step) step.textContent = stepText();
  }

  function renderHead() {
    const pace = paceOf(job);
    replace(head,
      h("div.crumbs", h("a", {href: "#/jobs"}, "Jobs"), " / ", h("span.mono", job.id)),
      h("div.title-row",
        h("h1", job.name || job.id), statusBadge(job.status), h("span.tag", job.type),
        h("span.spacer"),
        h("div.actions", actionsFor(job.status).map((action) => h(`button.button.action-${action}`,
          {type: "button", "data-action": action, onclick: () => act(action)},
          action[0].toUpperCase() + action.slice(1))))),
      h("div.head-progress", progressBar(job)),
      h("dl.facts",
        fact("Base model", h("span.mono", job.base_model)),
        fact("Dataset", h("a.mono", {href: `#/datasets/${job.dataset_id}`}, job.dataset_id)),
        fact("Step", h("span", {"data-step": ""}, stepText())),
        fact("Pace", pace ? [`${number(pace, 3)} steps/s`,
          job.tokens_per_second ? ` · ${number(Math.round(job.tokens_per_second))} tokens/s` : ""] : "–"),
        isEnded(job) ? fact("Duration", duration(tookOf(job))) : fact("ETA", h("span", {"data-eta": ""}, etaText(job))),
        fact("Created", dateTime(job.created_at)),
        fact("Seed", String(job.seed)),
        job.lora ? fact("LoRA", `r ${job.lora.r}`) : null),
      job.error ? notice("error", h("strong", job.error.type.replace("_", " ")), ": ", job.error.message) : null,
      h("details.hyper", h("summary", "Hyperparameters"),
        h("pre.json", JSON.stringify({hyperparameters: job.hyperparameters, lora: job.lora, reward: job.reward,
                                      metadata: job.metadata}, null, 2))));
  }
}

function noMetrics() {
  return notice("info", "No metrics yet: curves appear with the first step.");
}

function fact(label, value) {
  return h("div.fact", h("dt", label), h("dd", value));
}
