// Which charts a job gets, from the metric keys it reports, and the per-step table behind them.
//
// Keys are the trainers' `group/name` names (trainers/*.py): DPO/KTO/ORPO `rewards/*` and `logps/*`,
// PPO `objective/*`, `policy/*` and `val/*`, GRPO `reward/<grader>` and `completions/*`, DAPO
// `sampling/*`, every trainer's `train/*`. An evaluation key `eval/<name>` is drawn on the chart of its
// training key: `eval/loss` over `train/loss`, `eval/rewards/chosen` over `rewards/chosen`.

/** The eval key that overlays `key`'s curve. */
export function evalKey(key) {
  return `eval/${key.replace(/^train\//, "")}`;
}

const NOT_A_GRADER = new Set(["reward/mean", "reward/std", "reward/error_fraction", "reward/overlong_penalty"]);

// In display order. A chart holds the keys it lists (those present), or those its `match` accepts.
export const CHARTS = [
  {id: "loss", group: "Loss", title: "Loss", keys: ["train/loss"]},
  {id: "rewards", group: "Rewards", title: "Rewards: chosen vs rejected", keys: ["rewards/chosen", "rewards/rejected"]},
  {id: "margins", group: "Rewards", title: "Reward margin", keys: ["rewards/margins", "train/margin"]},
  {id: "accuracies", group: "Rewards", title: "Preference accuracy", keys: ["rewards/accuracies", "train/accuracy"]},
  {id: "reward", group: "Rewards", title: "Reward (mean, std)",
   keys: ["reward/mean", "reward/std", "train/reward_mean", "train/reward_std"]},
  {id: "graders", group: "Rewards", title: "Reward per grader",
   match: (key) => key.startsWith("reward/") && !NOT_A_GRADER.has(key)},
  {id: "objective", group: "Rewards", title: "RLHF objective",
   keys: ["objective/scores", "objective/rlhf_reward", "objective/non_score_reward"]},
  {id: "kl", group: "KL", title: "KL to the reference", keys: ["objective/kl", "kl", "policy/approx_kl"]},
  {id: "kl_coef", group: "KL", title: "KL coefficient", keys: ["objective/kl_coef"]},
  {id: "clipfrac", group: "Policy", title: "Clip fraction", keys: ["policy/clipfrac", "val/clipfrac"]},
  {id: "entropy", group: "Policy", title: "Entropy", keys: ["policy/entropy"]},
  {id: "policy_loss", group: "Policy", title: "Policy and value losses",
   keys: ["policy/pg_loss", "val/vf_loss", "ptx/loss"]},
  {id: "explained_variance", group: "Policy", title: "Value: explained variance", keys: ["val/explained_variance"]},
  {id: "length", group: "Completions", title: "Response length (tokens)",
   keys: ["completions/mean_length", "completions/max_length"]},
  {id: "eos", group: "Completions", title: "Ended with EOS", keys: ["completions/eos_fraction"]},
  {id: "signal", group: "Completions", title: "Groups without signal / grader errors",
   keys: ["frac_reward_zero_std", "reward/error_fraction", "reward/overlong_penalty"]},
  {id: "logps", group: "Log-probs", title: "Log-probs: chosen vs rejected", keys: ["logps/chosen", "logps/rejected"]},
  {id: "orpo", group: "Loss", title: "ORPO terms", keys: ["train/nll_loss", "train/log_odds_ratio", "train/log_odds_chosen"]},
  {id: "token_accuracy", group: "Loss", title: "Token accuracy", keys: ["train/mean_token_accuracy"]},
  {id: "sampling", group: "Dynamic sampling", title: "Dynamic sampling", match: (key) => key.startsWith("sampling/")},
  {id: "lr", group: "Optimization", title: "Learning rate", keys: ["train/learning_rate"]},
  {id: "grad_norm", group: "Optimization", title: "Gradient norm", keys: ["train/grad_norm"]},
  {id: "epoch", group: "Optimization", title: "Epoch", keys: ["train/epoch"]},
  {id: "tokens", group: "Optimization", title: "Tokens trained", keys: ["train/num_tokens"]},
  {id: "loss_scale", group: "Optimization", title: "fp16 loss scale", keys: ["train/loss_scale"]},
];

// The charts a job page shows first, beside its samples: what RLHF runs are judged by.
export const OVERVIEW = ["loss", "rewards", "margins", "reward", "kl"];

/**
 * Charts for a set of keys: [{id, group, title, series: [{key, eval}]}]; every key lands on exactly one
 * chart (keys no definition claims get a small chart each, in the group "Other").
 */
export function chartsFor(keys) {
  const present = new Set(keys);
  const claimed = new Set();
  const out = [];
  for (const def of CHARTS) {
    const train = (def.keys || [...present].filter((k) => !k.startsWith("eval/") && def.match(k)).sort())
      .filter((k) => present.has(k) && !claimed.has(k));
    const series = [];
    for (const key of train) {
      claimed.add(key);
      series.push({key, eval: false});
      const overlay = evalKey(key);
      if (present.has(overlay) && !claimed.has(overlay)) {
        claimed.add(overlay);
        series.push({key: overlay, eval: true});
      }
    }
    if (series.length) out.push({id: def.id, group: def.group, title: def.title, series});
  }
  for (const key of [...present].sort()) {
    if (claimed.has(key)) continue;
    const train = key.startsWith("eval/") ? null : key;
    const series = [{key, eval: key.startsWith("eval/")}];
    if (train && present.has(evalKey(key)) && !claimed.has(evalKey(key))) {
      series.push({key: evalKey(key), eval: true});
      claimed.add(evalKey(key));
    }
    claimed.add(key);
    out.push({id: `key:${key}`, group: "Other", title: key, series});
  }
  return out;
}

/**
 * Values by step, kept as uPlot wants them: one sorted x column of steps and one column per key, aligned,
 * null where a step lacks the key. A step reported again (a resumed run) replaces its values.
 */
export class MetricTable {
  constructor() {
    this.steps = [];
    this.columns = new Map();
    this.version = 0;
  }

  get keys() {
    return [...this.columns.keys()];
  }

  add(step, values) {
    let i = this.steps.length;
    if (i && this.steps[i - 1] >= step) {
      i = lowerBound(this.steps, step);
      if (this.steps[i] !== step) this.insertRow(i, step);
    } else {
      this.insertRow(i, step);
    }
    for (const [key, value] of Object.entries(values)) {
      if (!this.columns.has(key)) this.columns.set(key, new Array(this.steps.length).fill(null));
      this.columns.get(key)[i] = typeof value === "number" && Number.isFinite(value) ? value : null;
    }
    this.version += 1;
  }

  insertRow(i, step) {
    this.steps.splice(i, 0, step);
    for (const column of this.columns.values()) column.splice(i, 0, null);
  }

  column(key) {
    return this.columns.get(key) || new Array(this.steps.length).fill(null);
  }

  /** How many steps have a value of `key`. */
  count(key) {
    return this.column(key).reduce((n, v) => n + (v === null ? 0 : 1), 0);
  }

  last(key) {
    const column = this.column(key);
    for (let i = column.length - 1; i >= 0; i -= 1) if (column[i] !== null) return column[i];
    return null;
  }
}

function lowerBound(sorted, value) {
  let lo = 0, hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < value) lo = mid + 1; else hi = mid;
  }
  return lo;
}
