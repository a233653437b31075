// What the dashboard derives from a job object: progress, pace, ETA, and the actions its status allows.
// The API may report `progress`, `steps_per_second` and `estimated_finish` itself; where it does not (an
// older server, a run not yet measured), they are derived from the steps and the times.

import {ACTIVE, duration, h} from "./dom.js";

/** Progress in [0, 1], or null when the job's length is unknown. */
export function progressOf(job) {
  if (job.status === "succeeded") return 1;
  if (typeof job.progress === "number") return Math.min(1, Math.max(0, job.progress));
  if (job.total_steps) return Math.min(1, (job.current_step || 0) / job.total_steps);
  return null;
}

/** A step seen on the stream: the job's step and progress move with it between reads of the job. */
export function advance(job, step) {
  if (step <= (job.current_step || 0)) return false;
  job.current_step = step;
  if (job.total_steps) job.progress = Math.min(1, step / job.total_steps);
  return true;
}

/** Steps per second of the current run: the API's measure, else the average since it started. */
export function paceOf(job) {
  if (typeof job.steps_per_second === "number") return job.steps_per_second;
  if (job.status !== "running" || !job.started_at || !job.current_step) return null;
  const seconds = (Date.now() - new Date(job.started_at).getTime()) / 1000;
  return seconds > 0 ? job.current_step / seconds : null;
}

/** Seconds left, or null. */
export function etaOf(job) {
  if (!ACTIVE.has(job.status)) return null;
  if (job.estimated_finish) return Math.max(0, (new Date(job.estimated_finish).getTime() - Date.now()) / 1000);
  const pace = paceOf(job);
  if (!pace || !job.total_steps) return null;
  return Math.max(0, (job.total_steps - (job.current_step || 0)) / pace);
}

/** How long an ended job ran (from its first start to its end), or null. */
export function tookOf(job) {
  if (!job.finished_at || !job.started_at) return null;
  return (new Date(job.finished_at) - new Date(job.started_at)) / 1000;
}

export function isEnded(job) {
  return job.status === "succeeded" || job.status === "failed" || job.status === "cancelled";
}

export function etaText(job) {
  if (isEnded(job)) return tookOf(job) === null ? "–" : `took ${duration(tookOf(job))}`;
  const eta = etaOf(job);
  return eta === null ? "–" : duration(eta);
}

export function progressBar(job) {
  const fraction = progressOf(job);
  const bar = h(`div.progress-fill.status-${job.status}`);
  bar.style.width = `${Math.round((fraction ?? 0) * 100)}%`;
  const steps = job.total_steps ? `${job.current_step} / ${job.total_steps}` : `${job.current_step} steps`;
  return h("div.progress-cell", {title: fraction === null ? steps : `${(fraction * 100).toFixed(1)}%`},
    h("div.progress", {role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
                       "aria-valuenow": String(Math.round((fraction ?? 0) * 100))}, bar),
    h("span.progress-text", steps));
}

// What POST /v1/jobs/{id}/<action> accepts in each status (README: "Allowed moves").
const ACTIONS = {
  queued: ["pause", "cancel"],
  running: ["pause", "cancel"],
  pausing: ["cancel"],
  paused: ["resume", "cancel"],
};

export function actionsFor(status) {
  return ACTIONS[status] || [];
}
