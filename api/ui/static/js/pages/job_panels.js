// The job page's panels besides its charts: rollout samples, events, checkpoints (with download links).

import {post} from "../api.js";
import {bytes, dateTime, h, notice, number, replace} from "../dom.js";

const SAMPLE_FIELDS = new Set(["prompt", "completion", "reward"]);

/** Prompt, completion and reward rows of PPO/GRPO rollouts, one step at a time; follows the newest step. */
export class SamplesPanel {
  constructor() {
    this.byStep = new Map();
    this.step = null;
    this.follow = true;
    this.select = h("select.sample-step", {"aria-label": "step", onchange: () => this.show(Number(this.select.value), false)});
    this.followBox = h("input", {type: "checkbox", checked: true, onchange: () => {
      this.follow = this.followBox.checked;
      if (this.follow) this.show(this.latest(), true);
    }});
    this.summary = h("span.muted");
    this.body = h("div.samples-body", h("p.empty", "No samples yet: PPO and GRPO jobs report a few completions of "
      + "each rollout as they train."));
    this.el = h("section.card.samples", {"data-panel": "samples"},
      h("header.chart-title", h("h3", "Samples"), this.summary, h("span.spacer"),
        h("button.button.small", {type: "button", onclick: () => this.move(-1), title: "previous step"}, "◀"),
        this.select,
        h("button.button.small", {type: "button", onclick: () => this.move(1), title: "next step"}, "▶"),
        h("label.follow", this.followBox, " latest")),
      this.body);
  }

  latest() {
    return Math.max(...this.byStep.keys());
  }

  add(step, rows) {
    const known = this.byStep.has(step);
    this.byStep.set(step, rows);
    if (!known) {
      const steps = [...this.byStep.keys()].sort((a, b) => a - b);
      replace(this.select, steps.map((s) => h("option", {value: String(s)}, `step ${s}`)));
    }
    if (this.follow || this.step === null || this.step === step) this.show(this.follow ? this.latest() : step, this.follow);
    else this.select.value = String(this.step);
  }

  /** Show the samples of the sampled step nearest `step` (a step clicked on a chart). */
  pick(step) {
    if (!this.byStep.size) return;
    const steps = [...this.byStep.keys()];
    const nearest = steps.reduce((best, s) => (Math.abs(s - step) < Math.abs(best - step) ? s : best), steps[0]);
    this.show(nearest, false);
    this.el.scrollIntoView({block: "nearest", behavior: "smooth"});
  }

  move(delta) {
    const steps = [...this.byStep.keys()].sort((a, b) => a - b);
    const at = steps.indexOf(this.step);
    if (at + delta >= 0 && at + delta < steps.length) this.show(steps[at + delta], false);
  }

  show(step, follow) {
    this.step = step;
    this.follow = follow;
    this.followBox.checked = follow;
    this.select.value = String(step);
    const rows = this.byStep.get(step) || [];
    const rewards = rows.map((r) => r.reward).filter((r) => typeof r === "number");
    const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
    replace(this.summary, `step ${step} · ${rows.length} completions`, mean === null ? "" : ` · mean reward ${number(mean, 3)}`);
    const tbody = h("tbody");
    rows.forEach((row, i) => {
      // The completions of one prompt (a GRPO group) come together: the prompt is shown once for them.
      const first = i === 0 || rows[i - 1].prompt !== row.prompt;
      let span = 1;
      while (first && i + span < rows.length && rows[i + span].prompt === row.prompt) span += 1;
      const extra = Object.entries(row).filter(([k, v]) => !SAMPLE_FIELDS.has(k) && v !== null && typeof v !== "object");
      tbody.append(h("tr",
        first ? h("td.num", {rowspan: String(span)}, String(step)) : null,
        first ? h("td.text-cell", {rowspan: String(span)}, h("pre.text", text(row.prompt))) : null,
        h("td.text-cell", h("pre.text", text(row.completion))),
        h("td.num.reward", {"data-reward": String(row.reward)}, rewardBar(row.reward, rewards)),
        h("td.details", extra.map(([k, v]) => h("div", h("span.muted", k), " ", typeof v === "number" ? number(v, 3) : String(v))))));
    });
    replace(this.body, h("div.table-wrap.samples-scroll", h("table.table.samples-table",
      h("thead", h("tr", h("th", "Step"), h("th", "Prompt"), h("th", "Completion"), h("th.num", "Reward"), h("th", "Details"))),
      tbody)));
  }
}

function text(value) {
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return value.map((m) => `${m.role}: ${m.content}`).join("\n");
  return JSON.stringify(value);
}

function rewardBar(reward, all) {
  if (typeof reward !== "number") return "–";
  const lo = Math.min(0, ...all), hi = Math.max(...all, lo + 1e-9);
  const fill = h("span.reward-fill");
  fill.style.width = `${Math.round(((reward - lo) / (hi - lo)) * 100)}%`;
  return h("div.reward-cell", h("span.reward-value", number(reward, 3)), h("span.reward-bar", fill));
}

/** The job's events, newest first: status changes, warnings, errors, checkpoints. */
export class EventsPanel {
  constructor() {
    this.seen = new Set();
    this.list = h("ol.events");
    this.el = h("section.card.events-card", {"data-panel": "events"}, h("header.chart-title", h("h3", "Events")), this.list);
  }

  /** An event of GET /events ({id, type, level, message, created_at}) or of the stream. */
  add({id, type, level, message, created_at}) {
    if (id !== undefined && id !== null) {
      if (this.seen.has(id)) return;
      this.seen.add(id);
    }
    this.list.prepend(h(`li.event.level-${level || "info"}`, {"data-type": type},
      h("time", {title: dateTime(created_at)}, created_at ? new Date(created_at).toLocaleTimeString("en-GB") : ""),
      h(`span.tag.level-${level || "info"}`, type === "event" ? (level || "info") : type),
      h("span.event-message", message)));
    while (this.list.children.length > 500) this.list.lastChild.remove();
  }
}

/** The job's checkpoints with download buttons: a download link is made on click, then followed. */
export class CheckpointsPanel {
  constructor() {
    this.status = h("div");
    this.tbody = h("tbody", h("tr", h("td.empty", {colspan: "6"}, "No checkpoint yet.")));
    this.el = h("section.card.checkpoints-card", {"data-panel": "checkpoints"},
      h("header.chart-title", h("h3", "Checkpoints"),
        h("span.muted", "links work for a few minutes, without the key")),
      this.status,
      h("div.table-wrap", h("table.table.checkpoints-table",
        h("thead", h("tr", h("th", "Step"), h("th", "Loss"), h("th", "Size"), h("th", "sha256"), h("th", "Saved"),
          h("th", "Download"))), this.tbody)));
  }

  set(checkpoints) {
    if (!checkpoints.length) return;
    replace(this.tbody, [...checkpoints].sort((a, b) => b.step - a.step).map((c) => this.row(c)));
  }

  row(ckpt) {
    const loss = ckpt.metrics ? ckpt.metrics["train/loss"] : undefined;
    const adapter = ckpt.model && ckpt.model.adapter;
    return h("tr", {"data-checkpoint": ckpt.id},
      h("td.num", String(ckpt.step), ckpt.is_final ? h("span.tag.final", "final") : null),
      h("td.num", loss === undefined ? "–" : number(loss)),
      h("td.num", bytes(ckpt.size_bytes)),
      h("td.mono", {title: ckpt.sha256}, (ckpt.sha256 || "").slice(0, 12)),
      h("td.nowrap", dateTime(ckpt.created_at)),
      h("td.nowrap",
        h("button.button.small", {type: "button", "data-download": "archive", onclick: () => this.download(ckpt, false)},
          adapter ? "Adapter" : "Download"),
        adapter ? h("button.button.small", {type: "button", "data-download": "merged",
                                            title: "Base and adapter merged into one model (made on first request)",
                                            onclick: () => this.download(ckpt, true)}, "Merged") : null));
  }

  async download(ckpt, merged) {
    replace(this.status);
    try {
      const link = await post(`/v1/checkpoints/${ckpt.id}/download_link`, undefined, {query: {merged}});
      this.el.dataset.lastLink = link.url;
      // A plain navigation: the archive streams to disk (Content-Disposition: attachment), never into memory.
      const anchor = h("a", {href: link.url, download: ""});
      document.body.append(anchor);
      anchor.click();
      anchor.remove();
    } catch (err) {
      replace(this.status, notice("error", err.message));
    }
  }
}
