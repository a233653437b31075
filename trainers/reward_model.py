"""Bradley–Terry reward models (Ouyang et al. 2022, §3.5, https://arxiv.org/abs/2203.02155).

One loop in numbered sections; the optimisation plumbing (AdamW with linear warmup then a constant
rate, resume, stop, the update guard, cadence and checkpoints) is `trainers.loop`'s. Chosen and
rejected responses of a micro-batch go through the same forwards (one row per pair sharing its
prompt, or 2B rows grouped by length); the reward of a response is the score head's output at its
last token (`trainers.models.reward.rewards`, `shared_prompt_rewards`). Every checkpoint
records the mean and std of the rewards over a fixed sample of training pairs, which PPO and GRPO
use to normalise this model's scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainers.data.batching import BatchOrder, bucket_overhead_tokens, split_micro_batches
from trainers.data.preference import PreferenceBatch, TokenizedPair, collate_pairs, tokenize_split
from trainers.loop import TrainingLoop, announce_model, seed_everything
from trainers.models.checkpoint import load_trainer_state
from trainers.models.loading import default_device, disable_dropout
from trainers.models.lora import load_trainable_model
from trainers.models.reward import (
    load_reward_model,
    reward_stats,
    rewards,
    shared_prompt_rewards,
    shares_prompts,
    stats_sample,
)
from trainers.ops.pairwise_losses import bradley_terry_loss
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import RewardModelHyperparameters, RewardModelJob
from trainers.spec.errors import UserError
from trainers.spec.results import RunResult, TrainingData

# What `pair_losses_and_stats` stacks per pair; `summarize` turns their sums into the metrics.
PAIR_STATS = ("loss", "accuracy", "margin", "reward_sum", "reward_square_sum")
TRAIN_METRICS = ("train/loss", "train/accuracy", "train/margin", "train/reward_mean", "train/reward_std")
EVAL_METRICS = tuple("eval/" + name.removeprefix("train/") for name in TRAIN_METRICS)


def train_reward_model(
    job: RewardModelJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a Bradley–Terry reward model on preference pairs.

    Args:
        job: the reward-model job spec.
        data: canonical preference rows (train, optional eval); a row's optional numeric
            ``margin`` is the m of its loss term.
        callbacks: metrics, checkpoints, events and cooperative stop.
        resume_from: a checkpoint directory to continue from.

    Returns:
        The run's status, the step reached and the last step's metrics.

    Raises:
        UserError: bad data or spec; ModelNotFoundError for a model that cannot be loaded.
        NumericalError: a non-finite loss or gradient norm, naming the step.
    """
    hp = job.hyperparameters
    device = default_device()
    seed_everything(job.seed)  # before adapters are drawn; a resumed run restores its RNG states later
    state = load_trainer_state(resume_from) if resume_from is not None else None

    # 1. Model: the base model under a one-output score head (with fresh adapters for LoRA, which
    #    keep the head trainable), or the checkpoint's model.
    model, tokenizer = load_trainable_model(load_reward_model, job, resume_from, task="seq_cls")
    if hp.disable_dropout:
        disable_dropout(model)
    model.to(device).train()
    announce_model(callbacks, job.base_model, [model], device)

    # 2. Data: tokenised once, with each pair's margin; the rows of step s are a pure function of
    #    (seed, s). The reward statistics are taken on a fixed sample of training pairs.
    train_pairs = tokenize_split(data.train, tokenizer, hp, "train", callbacks)
    eval_pairs = tokenize_split(data.eval, tokenizer, hp, "eval", callbacks) if data.eval else []
    if not train_pairs:
        raise UserError("the training data has no rows")
    train_margins = pair_margins(data.train, "train").to(device)  # (N,)
    eval_margins = pair_margins(data.eval or [], "eval").to(device)  # (N_eval,)
    order = BatchOrder(num_rows=len(train_pairs), batch_size=hp.batch_size, seed=job.seed)
    stats_pairs = [train_pairs[i] for i in stats_sample(len(train_pairs), hp.reward_stats_rows, job.seed)]
    pass_size = max(1, hp.batch_size // hp.gradient_accumulation_steps)  # pairs per gradient-free forward
    # Forwards: pairs of similar length together, each pair's prompt computed once (`collate_pairs`).
    layout = {"bucket_overhead_tokens": bucket_overhead_tokens(device.type),
              "shared_prompt": shares_prompts(model, train_pairs + eval_pairs)}  # fmt: skip

    def model_info() -> dict[str, Any]:
        mean, std = reward_stats(model, stats_pairs, tokenizer.pad_token_id, batch_size=pass_size, device=device)
        return {"kind": "reward_model", "adapter": job.lora is not None, "base_model": job.base_model,
                "reward_mean": mean, "reward_std": std}  # fmt: skip

    # 3. Optimiser, schedule, step and RNG (restored when resuming), cadence and checkpoints.
    loop = TrainingLoop(
        job, callbacks, model=model, tokenizer=tokenizer, state=state, model_info=model_info,
        num_rows=len(train_pairs), steps_per_epoch=order.steps_per_epoch,
    )  # fmt: skip
    metrics: dict[str, float] = {}

    while loop.step < loop.total_steps:
        # 4. Cooperative stop, polled once per step: keep the progress, then return.
        if loop.stop_requested():
            return loop.stop(metrics)
        step = loop.next_step()

        # 5. Gradients: every micro-batch's summed loss is divided by the pairs in the whole
        #    step, so the update is the mean over the step's pairs whatever the micro-batching.
        indices = order.step_indices(step)
        sums = torch.zeros(len(PAIR_STATS), device=device)  # (S,) per-pair statistics, summed
        for micro in split_micro_batches(indices, hp.gradient_accumulation_steps):
            batch = collate_pairs([train_pairs[i] for i in micro], tokenizer.pad_token_id, **layout).to(device)
            losses, stats = pair_losses_and_stats(model, batch, train_margins[micro], hp)  # (b,), (S, b)
            (losses.sum() / len(indices)).backward()
            sums += stats.sum(dim=1)

        # 6. Update: clip, refuse non-finite values, step the optimiser and the schedule.
        metrics = loop.update(summarize(sums, len(indices)), TRAIN_METRICS)

        # 7. Metrics: per step, over the step's pairs; evaluation every `eval_every` steps, at
        #    checkpoints and at the end, reported with the train metrics of its step.
        evaluated = bool(eval_pairs) and loop.eval_due()
        if evaluated:
            metrics |= evaluate(model, eval_pairs, eval_margins, tokenizer.pad_token_id, hp, pass_size, layout)
        if evaluated or loop.log_due():
            callbacks.on_metrics(step, metrics)

        # 8. Checkpoint every `checkpoint_every` steps and at the end, with the reward statistics.
        if loop.checkpoint_due():
            loop.checkpoint(metrics)

    return loop.finish(metrics)


def pair_losses_and_stats(
    model: nn.Module, batch: PreferenceBatch, margins: Tensor, hp: RewardModelHyperparameters
) -> tuple[Tensor, Tensor]:
    """Bradley–Terry losses of a batch of pairs, and the per-pair statistics behind the metrics.

    ``loss = −log σ(r_c − r_r − m) + η·(r_c + r_r)²`` per pair (`bradley_terry_loss`); chosen and
    rejected responses go through the same forwards.

    Args:
        model: the reward model being trained.
        batch: B pairs as 2B rows, chosen first.
        margins: (B,) each pair's margin m (0 where the row has none).
        hp: supplies the centring coefficient η.

    Returns:
        losses: (B,) differentiable loss per pair.
        stats: (S, B) detached statistics in `PAIR_STATS` order: loss, ``r_c > r_r``,
            ``r_c − r_r``, ``r_c + r_r``, ``r_c² + r_r²``.
    """
    b = batch.num_pairs
    if batch.shared:  # one row per pair, the prompt computed once
        r = shared_prompt_rewards(model, batch.shared, 2 * b)  # (2B,)
    else:  # chosen and rejected rows, those of similar length in one forward
        r = rewards(model, batch.input_ids, batch.attention_mask, batch.buckets)  # (2B,)
    chosen, rejected = r[:b], r[b:]  # (B,) each
    losses = bradley_terry_loss(chosen, rejected, margins, hp.center_rewards_coefficient)  # (B,)
    chosen, rejected = chosen.detach(), rejected.detach()
    stats = torch.stack(
        [
            losses.detach(),
            (chosen > rejected).float(),
            chosen - rejected,
            chosen + rejected,
            chosen**2 + rejected**2,
        ]
    )  # (S, B)
    return losses, stats


def summarize(sums: Tensor, num_pairs: int) -> Tensor:
    """Metric values from per-pair statistics summed over `num_pairs` pairs (no host sync).

    Loss, accuracy and margin are means over the pairs; the reward mean and (population) std are
    over the 2·`num_pairs` rewards: ``mean = Σ(r_c + r_r) / 2n``, ``std = sqrt(Σ(r_c² + r_r²) / 2n − mean²)``.

    Args:
        sums: (S,) `PAIR_STATS` summed over the pairs.
        num_pairs: n, the pairs summed.

    Returns:
        (5,) values in `TRAIN_METRICS` order.
    """
    means = sums / num_pairs  # (S,)
    reward_mean = means[3] / 2
    reward_std = (means[4] / 2 - reward_mean**2).clamp(min=0).sqrt()
    return torch.stack([means[0], means[1], means[2], reward_mean, reward_std])  # (5,)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    pairs: list[TokenizedPair],
    margins: Tensor,
    pad_token_id: int,
    hp: RewardModelHyperparameters,
    batch_size: int,
    layout: dict | None = None,
) -> dict[str, float]:
    """Bradley–Terry statistics over evaluation pairs, as ``eval/<name>`` metrics.

    Args:
        model: the reward model (put in eval mode for the duration).
        pairs: tokenised evaluation pairs.
        margins: (N,) their margins, on the model's device.
        pad_token_id: padding id.
        hp: supplies the centring coefficient.
        batch_size: pairs per forward.
        layout: `collate_pairs`' keyword arguments (length groups, shared prompts).

    Returns:
        ``{"eval/loss", "eval/accuracy", "eval/margin", "eval/reward_mean", "eval/reward_std"}``.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(len(PAIR_STATS), device=margins.device)  # (S,)
    for start in range(0, len(pairs), batch_size):
        batch = collate_pairs(pairs[start : start + batch_size], pad_token_id, **(layout or {})).to(margins.device)
        _, stats = pair_losses_and_stats(model, batch, margins[start : start + batch_size], hp)  # (S, b)
        sums += stats.sum(dim=1)
    model.train(was_training)
    return dict(zip(EVAL_METRICS, summarize(sums, len(pairs)).tolist(), strict=True))


def pair_margins(rows: Sequence[dict[str, Any]], split: str) -> Tensor:
    """The optional numeric ``margin`` of each row (Touvron et al. 2023, §3.2.2); 0 when absent.

    Args:
        rows: canonical preference rows.
        split: name of the rows in error messages.

    Returns:
        (N,) float32 margins.

    Raises:
        UserError: a margin is not a finite number; the message names the row.
    """
    margins = []
    for i, row in enumerate(rows):
        value = row.get("margin")
        if value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UserError(f"{split} row {i}: 'margin' must be a finite number, got {value!r}")
        margins.append(float(value))
    return torch.tensor(margins, dtype=torch.float32)
