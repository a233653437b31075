"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

One loop in numbered sections. The reference model is a frozen copy of the initial policy and its
log-probs are computed on the fly, in the same micro-batches as the policy's. The learning rate
rises linearly for `warmup_steps` steps, then stays constant, as in the DPO paper's setup.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers.batching import BatchOrder, split_micro_batches
from trainers.callbacks import Callbacks
from trainers.checkpoint import MODEL_DIR, load_trainer_state
from trainers.config import DPOHyperparameters, DPOJob
from trainers.errors import UserError
from trainers.logprobs import sequence_logprobs
from trainers.loop import TrainingLoop, seed_everything
from trainers.losses import dpo_loss
from trainers.modeling import default_device, load_policy
from trainers.preference_data import PreferenceBatch, TokenizedPair, collate_pairs, tokenize_pairs
from trainers.run_types import RunResult, TrainingData

# Per-pair statistics, in the order `pair_losses_and_stats` stacks them; eval metrics are the same
# under `eval/` (eval/loss, eval/rewards/chosen, ...).
TRAIN_METRICS = ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected")  # fmt: skip
EVAL_METRICS = tuple("eval/" + name.removeprefix("train/") for name in TRAIN_METRICS)


def train_dpo(
    job: DPOJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a policy with DPO on preference pairs.

    Args:
        job: the DPO job spec.
        data: canonical preference rows (train, optional eval).
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
    seed_everything(job.seed)

    # 1. Models: the reference is the initial policy, frozen; when resuming, the policy is the
    #    checkpoint's model while the reference is still the job's base model.
    reference, tokenizer = load_policy(job.base_model)
    state = load_trainer_state(resume_from) if resume_from is not None else None
    if state is None:
        policy = copy.deepcopy(reference)
    else:
        policy, tokenizer = load_policy(Path(resume_from) / MODEL_DIR)
    reference.to(device).eval().requires_grad_(False)
    policy.to(device).train()
    n_params = sum(p.numel() for p in policy.parameters())
    callbacks.on_event("info", f"loaded {job.base_model} ({n_params:,} parameters) on {device.type}")

    # 2. Data: tokenised once; the rows of step s are a pure function of (seed, s).
    train_pairs = _tokenize(data.train, tokenizer, hp, "train", callbacks)
    eval_pairs = _tokenize(data.eval, tokenizer, hp, "eval", callbacks) if data.eval else []
    if not train_pairs:
        raise UserError("the training data has no rows")
    order = BatchOrder(num_rows=len(train_pairs), batch_size=hp.batch_size, seed=job.seed)

    # 3. Optimiser, schedule, step and RNG (restored when resuming), cadence and checkpoints.
    loop = TrainingLoop(
        job, callbacks, model=policy, tokenizer=tokenizer, state=state,
        model_info=lambda: {"kind": "causal_lm", "adapter": False, "base_model": job.base_model},
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
        sums = torch.zeros(len(TRAIN_METRICS), device=device)  # (S,) per-pair statistics, summed
        for micro in split_micro_batches(indices, hp.gradient_accumulation_steps):
            batch = collate_pairs([train_pairs[i] for i in micro], tokenizer.pad_token_id).to(device)
            losses, stats = pair_losses_and_stats(policy, reference, batch, hp)  # (b,), (S, b)
            (losses.sum() / len(indices)).backward()
            sums += stats.sum(dim=1)

        # 6. Update: clip, refuse non-finite values, step the optimiser and the schedule.
        metrics = loop.update(sums / len(indices), TRAIN_METRICS)

        # 7. Metrics: per step, averaged over the step's pairs; evaluation every `eval_every`
        #    steps, at checkpoints and at the end, reported with the train metrics of its step.
        evaluated = bool(eval_pairs) and loop.eval_due()
        if evaluated:
            metrics |= evaluate(policy, reference, eval_pairs, tokenizer.pad_token_id, hp, device)
        if evaluated or loop.log_due():
            callbacks.on_metrics(step, metrics)

        # 8. Checkpoint every `checkpoint_every` steps and at the end.
        if loop.checkpoint_due():
            loop.checkpoint(metrics)

    return loop.finish(metrics)


def pair_losses_and_stats(
    policy: nn.Module, reference: nn.Module, batch: PreferenceBatch, hp: DPOHyperparameters
) -> tuple[Tensor, Tensor]:
    """DPO losses of a batch of pairs, and the per-pair statistics behind the metrics.

    Chosen and rejected rows go through one policy forward (and one reference forward).

    Args:
        policy: the model being trained.
        reference: the frozen reference model.
        batch: B pairs as 2B rows, chosen first.
        hp: supplies β and the loss type.

    Returns:
        losses: (B,) differentiable DPO loss per pair.
        stats: (S, B) detached statistics in `TRAIN_METRICS` order.
    """
    b = batch.num_pairs
    _, logps = sequence_logprobs(policy, batch.input_ids, batch.attention_mask, batch.loss_mask)  # (2B,)
    with torch.no_grad():
        _, ref_logps = sequence_logprobs(reference, batch.input_ids, batch.attention_mask, batch.loss_mask)  # (2B,)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], hp.beta, hp.loss_type
    )  # (B,) each
    stats = torch.stack(
        [
            losses.detach(),
            chosen_rewards,
            rejected_rewards,
            (chosen_rewards > rejected_rewards).float(),
            chosen_rewards - rejected_rewards,
            logps[:b].detach(),
            logps[b:].detach(),
        ]
    )  # (S, B)
    return losses, stats


@torch.no_grad()
def evaluate(
    policy: nn.Module,
    reference: nn.Module,
    pairs: list[TokenizedPair],
    pad_token_id: int,
    hp: DPOHyperparameters,
    device: torch.device,
) -> dict[str, float]:
    """Mean DPO statistics over evaluation pairs, as ``eval/<name>`` metrics.

    Args:
        policy: the model being trained (put in eval mode for the duration).
        reference: the frozen reference model.
        pairs: tokenised evaluation pairs.
        pad_token_id: padding id.
        hp: supplies β, the loss type and the batch size.
        device: where the models are.

    Returns:
        ``{"eval/loss": ..., "eval/rewards/accuracies": ..., ...}``.
    """
    was_training = policy.training
    policy.eval()
    micro = max(1, hp.batch_size // hp.gradient_accumulation_steps)
    sums = torch.zeros(len(EVAL_METRICS), device=device)  # (S,)
    for start in range(0, len(pairs), micro):
        batch = collate_pairs(pairs[start : start + micro], pad_token_id).to(device)
        _, stats = pair_losses_and_stats(policy, reference, batch, hp)  # (S, b)
        sums += stats.sum(dim=1)
    policy.train(was_training)
    return dict(zip(EVAL_METRICS, (sums / len(pairs)).tolist(), strict=True))


def _tokenize(rows, tokenizer, hp: DPOHyperparameters, split: str, callbacks: Callbacks) -> list[TokenizedPair]:
    pairs = tokenize_pairs(
        rows, tokenizer, max_length=hp.max_length, max_prompt_length=hp.max_prompt_length, split=split
    )
    truncated = sum(p.truncated for p in pairs)
    if truncated:
        callbacks.on_event(
            "warning",
            f"{truncated} of {len(pairs)} {split} pairs were truncated "
            f"(max_prompt_length={hp.max_prompt_length}, max_length={hp.max_length})",
        )
    return pairs
