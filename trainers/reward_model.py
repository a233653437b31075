"""Bradley–Terry reward models (Ouyang et al. 2022, §3.5, https://arxiv.org/abs/2203.02155).

One loop in numbered sections; the set-up is `trainers.run_setup`'s, the optimisation plumbing (AdamW
with linear warmup then a constant rate, resume, stop, the update guard, cadence and checkpoints)
is `trainers.loop`'s. Chosen and rejected responses of a micro-batch go through the same forwards
(one row per pair sharing its prompt, or 2B rows grouped by length); the reward of a response is
the score head's output at its last token (`trainers.models.reward.rewards`,
`shared_prompt_rewards`). Every checkpoint records the mean and std of the rewards over a fixed
sample of training pairs, which PPO and GRPO use to normalise this model's scores.

On several processes (`trainers.distributed`) each rank takes its share of every micro-batch,
evaluation batch and statistics batch, and every statistic is summed over ranks before it is
averaged: the metrics, the checkpoints and their reward statistics are those of one process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainers.data.batching import BatchOrder, bucket_overhead_tokens, split_micro_batches
from trainers.data.preference import PreferenceBatch, TokenizedPair, collate_pairs
from trainers.distributed.ranks import Ranks
from trainers.models.reward import (
    reward_stats,
    rewards,
    shared_prompt_rewards,
    shares_prompts,
    stats_sample,
)
from trainers.ops.pairwise_losses import bradley_terry_loss
from trainers.run_setup import prepare_run
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import RewardModelHyperparameters, RewardModelJob
from trainers.spec.errors import UserError
from trainers.spec.results import RunResult, TrainingData
from trainers.token_count import TokenCount

# What `pair_losses_and_stats` stacks per pair; `summarize` turns their sums into the metrics.
PAIR_STATS = ("loss", "accuracy", "margin", "reward_sum", "reward_square_sum")
TRAIN_METRICS = ("train/loss", "train/accuracy", "train/margin", "train/reward_mean", "train/reward_std")
EVAL_METRICS = tuple("eval/" + name.removeprefix("train/") for name in TRAIN_METRICS)


def train_reward_model(
    job: RewardModelJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a Bradley–Terry reward model on preference pairs.

    1. Set up the run (`prepare_run`): the reward model, the tokenised pairs.
    2. The pairs' margins, their order, the sample the reward statistics are taken on.
    3. The training loop (`TrainingLoop`), and the tokens trained before a resume. Then, step after step:
    4. stop when asked;
    5. gradients of the step's pairs (`accumulate_gradients`);
    6. update, and count the step's tokens;
    7. evaluate when due, and log;
    8. checkpoint when due, with the reward statistics.

    Args:
        job: the reward-model job spec.
        data: canonical preference rows (train, optional eval); a row's optional numeric
            ``margin`` is the m of its loss term.
        callbacks: get the metrics, checkpoints and events; say when to stop.
        resume_from: a reward-model checkpoint to continue from, or None.

    Returns:
        What the run ended with (`RunResult`); errors are those `trainers.run` lists.
    """
    hp = job.hyperparameters

    # 1. The base model under a one-output score head (with fresh adapters for LoRA, which keep
    #    the head trainable), or the checkpoint's model; the pairs tokenised once.
    run = prepare_run(job, data, callbacks, resume_from=resume_from, model="reward_model")
    model, pad, device, size = run.model, run.tokenizer.pad_token_id, run.device, run.micro_batch_size
    ranks = run.ranks  # each rank takes its share of every batch; statistics are summed over ranks

    # 2. Each pair's margin; the pairs of step s, a pure function of (seed, s); the fixed sample of
    #    training pairs the reward statistics are taken on. Forwards: pairs of similar length
    #    together, each pair's prompt computed once (`collate_pairs`). On several ranks one forward
    #    per micro-batch: every forward of a parallel model is a collective, and length buckets
    #    would give ranks different numbers of them.
    train_margins = pair_margins(data.train, "train").to(device)  # (N,)
    eval_margins = pair_margins(data.eval or [], "eval").to(device)  # (N_eval,)
    order = BatchOrder(num_rows=len(run.train), batch_size=hp.batch_size, seed=job.seed)
    stats_pairs = [run.train[i] for i in stats_sample(len(run.train), hp.reward_stats_rows, job.seed)]
    layout = {"bucket_overhead_tokens": None if ranks.distributed else bucket_overhead_tokens(device.type),
              "shared_prompt": shares_prompts(model, run.train + run.eval)}  # fmt: skip

    def model_info() -> dict[str, Any]:  # called on every rank at each checkpoint
        mean, std = reward_stats(model, stats_pairs, pad, batch_size=size, device=device, ranks=ranks)
        return run.model_info() | {"reward_mean": mean, "reward_std": std}

    with run.autocast():  # every forward pass below runs in the job's precision
        # 3. Optimiser, schedule, step and RNG (restored when resuming), cadence and checkpoints;
        #    the tokens trained so far follow from the data order, so a resumed count continues. A
        #    pair's forwards read prompt + chosen and prompt + rejected, the prompt once when shared.
        loop = run.training_loop(order.steps_per_epoch, model_info=model_info)
        prompts = 1 if layout["shared_prompt"] else 2
        lengths = [prompts * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in run.train]
        tokens = TokenCount.through(order, lengths, loop.step)
        metrics: dict[str, float] = {}

        while loop.step < loop.total_steps:
            # 4. Cooperative stop, polled once per step: keep the progress, then return.
            if loop.stop_requested():
                return loop.stop(metrics)
            indices = order.step_indices(loop.next_step())

            # 5. Gradients of the step's pairs, the mean over them whatever the micro-batching.
            stats = accumulate_gradients(model, run.train, indices, train_margins, pad, hp, layout,
                                         backward=loop.backward, ranks=ranks)  # fmt: skip

            # 6. Update: clip, refuse non-finite values, step the optimiser and the schedule.
            metrics = loop.update(stats, TRAIN_METRICS) | tokens.add_rows(indices)

            # 7. Metrics: per step, over the step's pairs; evaluation every `eval_every` steps, at
            #    checkpoints and at the end, reported with the train metrics of its step.
            evaluated = bool(run.eval) and loop.eval_due()
            if evaluated:
                metrics |= evaluate(model, run.eval, eval_margins, pad, hp, size, layout, ranks)
            loop.log(metrics, evaluated=evaluated)

            # 8. Checkpoint every `checkpoint_every` steps and at the end, with the reward statistics.
            if loop.checkpoint_due():
                loop.checkpoint(metrics)

        return loop.finish(metrics)


def accumulate_gradients(
    model: nn.Module,
    pairs: list[TokenizedPair],
    indices: list[int],
    margins: Tensor,
    pad_token_id: int,
    hp: RewardModelHyperparameters,
    layout: dict | None = None,
    *,
    backward: Callable[[Tensor], None] = Tensor.backward,
    ranks: Ranks | None = None,
) -> Tensor:
    """Backward the Bradley–Terry loss of one optimizer step in `gradient_accumulation_steps` parts.

    A part's summed loss is divided by the step's pair count: the accumulated gradient is the one
    of the mean loss over the step's pairs, however they are split. On several ranks each takes
    its share of every part (`Ranks.batch_share`) and still divides by the whole step's count, so
    the ranks' gradients add up to one process's; the statistics are summed over ranks before the
    reward std (not a mean, so not a sum of shares) is taken from them.

    Args:
        model: the reward model being trained; gradients accumulate into its parameters.
        pairs: the tokenised training pairs.
        indices: positions in `pairs` of the step's pairs.
        margins: (N,) every training pair's margin, on the model's device.
        pad_token_id: padding id.
        hp: supplies the centring coefficient and the number of parts.
        layout: `collate_pairs`' keyword arguments (length groups, shared prompts).
        backward: runs a loss's backward pass (`TrainingLoop.backward`, which scales it under fp16,
            and by the world size on several ranks).
        ranks: the job's processes (default: one).

    Returns:
        (5,) the step's values in `TRAIN_METRICS` order (`summarize`), on the device; on several
        ranks, 1/world_size of them on every rank (`TrainingLoop.update` sums them over ranks).
    """
    ranks = ranks or Ranks()
    sums = torch.zeros(len(PAIR_STATS), device=margins.device)  # (S,) per-pair statistics, summed
    for micro in split_micro_batches(indices, hp.gradient_accumulation_steps):
        mine, weight = ranks.batch_share(micro)
        batch = collate_pairs([pairs[i] for i in mine], pad_token_id, **(layout or {})).to(margins.device)
        losses, stats = pair_losses_and_stats(model, batch, margins[mine], hp)  # (b,), (S, b)
        backward(weight * losses.sum() / len(indices))
        sums += weight * stats.sum(dim=1)
    if not ranks.distributed:
        return summarize(sums, len(indices))
    return summarize(ranks.sum(sums), len(indices)) / ranks.world_size


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
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Bradley–Terry statistics over evaluation pairs, as ``eval/<name>`` metrics (each rank scores its share).

    Args:
        model: the reward model (put in eval mode for the duration).
        pairs: tokenised evaluation pairs.
        margins: (N,) their margins, on the model's device.
        pad_token_id: padding id.
        hp: supplies the centring coefficient.
        batch_size: pairs per forward (per rank).
        layout: `collate_pairs`' keyword arguments (length groups, shared prompts).
        ranks: the job's processes (default: one).

    Returns:
        ``{"eval/loss", "eval/accuracy", "eval/margin", "eval/reward_mean", "eval/reward_std"}``, over
        all the pairs on every rank.
    """
    ranks = ranks or Ranks()
    was_training = model.training
    model.eval()
    size = batch_size * ranks.world_size
    sums = torch.zeros(len(PAIR_STATS), device=margins.device)  # (S,)
    for start in range(0, len(pairs), size):
        indices, weight = ranks.batch_share(range(start, min(start + size, len(pairs))))
        batch = collate_pairs([pairs[i] for i in indices], pad_token_id, **(layout or {})).to(margins.device)
        _, stats = pair_losses_and_stats(model, batch, margins[indices], hp)  # (S, b)
        sums += weight * stats.sum(dim=1)
    model.train(was_training)
    return dict(zip(EVAL_METRICS, summarize(ranks.sum(sums), len(pairs)).tolist(), strict=True))


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
