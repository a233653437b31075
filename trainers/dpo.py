"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

One loop in numbered sections; the optimisation plumbing (AdamW with linear warmup then a constant
rate, resume, stop, the update guard, cadence and checkpoints) is `trainers.loop`'s. The
reference policy π_ref is the job's base model. By default its log-probs are computed in one pass
before training and kept as a table, so no reference model is in memory while training; with
``precompute_ref_logprobs=False`` they are computed on the fly, in the same micro-batches as the
policy's. With LoRA the reference is the policy with its adapters disabled: there is never a
second copy of the weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import PeftModel
from torch import Tensor, nn

from trainers.data.batching import BatchOrder, bucket_overhead_tokens, split_micro_batches
from trainers.data.preference import PreferenceBatch, TokenizedPair, collate_pairs, tokenize_split
from trainers.loop import TrainingLoop, announce_model, seed_everything
from trainers.models.checkpoint import load_trainer_state
from trainers.models.loading import default_device, disable_dropout, load_policy
from trainers.models.lora import load_trainable_model
from trainers.ops.logprobs import reference_sequence_logprobs, scored_token_counts, sequence_logprob_totals
from trainers.ops.pairwise_losses import dpo_loss
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import DPOHyperparameters, DPOJob
from trainers.spec.errors import UserError
from trainers.spec.results import RunResult, TrainingData

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
    seed_everything(job.seed)  # before adapters are drawn; a resumed run restores its RNG states later
    state = load_trainer_state(resume_from) if resume_from is not None else None

    # 1. Policy: the base model (wrapped in fresh adapters for LoRA), or the checkpoint's model.
    policy, tokenizer = load_trainable_model(load_policy, job, resume_from, task="causal_lm")
    if hp.disable_dropout:
        disable_dropout(policy)
    policy.to(device).train()
    announce_model(callbacks, job.base_model, [policy], device)

    # 2. Data: tokenised once; the rows of step s are a pure function of (seed, s).
    train_pairs = tokenize_split(data.train, tokenizer, hp, "train", callbacks)
    eval_pairs = tokenize_split(data.eval, tokenizer, hp, "eval", callbacks) if data.eval else []
    if not train_pairs:
        raise UserError("the training data has no rows")
    order = BatchOrder(num_rows=len(train_pairs), batch_size=hp.batch_size, seed=job.seed)
    overhead = bucket_overhead_tokens(device.type)  # rows of similar length run as one forward

    # 3. Reference log-probs: precomputed in one pass (no reference model kept), or a model that
    #    computes them on every batch.
    reference_model = _reference_model(policy, job, resumed=state is not None, device=device)
    if hp.precompute_ref_logprobs:
        size = _pass_batch_size(hp)
        pad = tokenizer.pad_token_id
        train_reference = Reference.precompute(reference_model, train_pairs, pad, size, device, overhead)
        eval_reference = Reference.precompute(reference_model, eval_pairs, pad, size, device, overhead)
        callbacks.on_event("info", f"precomputed reference log-probs of {len(train_pairs) + len(eval_pairs)} pairs")
    else:
        train_reference = eval_reference = Reference(model=reference_model)
    del reference_model  # its last name here: a precomputed run keeps no reference model from now on

    # 4. Optimiser, schedule, step and RNG (restored when resuming), cadence and checkpoints.
    loop = TrainingLoop(
        job, callbacks, model=policy, tokenizer=tokenizer, state=state,
        model_info=lambda: {"kind": "causal_lm", "adapter": job.lora is not None, "base_model": job.base_model},
        num_rows=len(train_pairs), steps_per_epoch=order.steps_per_epoch,
    )  # fmt: skip
    metrics: dict[str, float] = {}

    while loop.step < loop.total_steps:
        # 5. Cooperative stop, polled once per step: keep the progress, then return.
        if loop.stop_requested():
            return loop.stop(metrics)
        step = loop.next_step()

        # 6. Gradients: every micro-batch's summed loss is divided by the pairs in the whole
        #    step, so the update is the mean over the step's pairs whatever the micro-batching.
        indices = order.step_indices(step)
        sums = torch.zeros(len(TRAIN_METRICS), device=device)  # (S,) per-pair statistics, summed
        for micro in split_micro_batches(indices, hp.gradient_accumulation_steps):
            batch = collate_pairs(
                [train_pairs[i] for i in micro], tokenizer.pad_token_id, bucket_overhead_tokens=overhead
            ).to(device)
            ref_logps = train_reference.logps(batch, micro)  # (2b,)
            losses, stats = pair_losses_and_stats(policy, batch, ref_logps, hp)  # (b,), (S, b)
            (losses.sum() / len(indices)).backward()
            sums += stats.sum(dim=1)

        # 7. Update: clip, refuse non-finite values, step the optimiser and the schedule.
        metrics = loop.update(sums / len(indices), TRAIN_METRICS)

        # 8. Metrics: per step, averaged over the step's pairs; evaluation every `eval_every`
        #    steps, at checkpoints and at the end, reported with the train metrics of its step.
        evaluated = bool(eval_pairs) and loop.eval_due()
        if evaluated:
            metrics |= evaluate(policy, eval_reference, eval_pairs, tokenizer.pad_token_id, hp, device, overhead)
        if evaluated or loop.log_due():
            callbacks.on_metrics(step, metrics)

        # 9. Checkpoint every `checkpoint_every` steps and at the end.
        if loop.checkpoint_due():
            loop.checkpoint(metrics)

    return loop.finish(metrics)


class Reference:
    """Summed response log-probs of the reference policy π_ref, for batches of pairs.

    Either a table filled once before training (`Reference.precompute`), so no reference model
    is needed while training; or a model run on each batch with `reference_sequence_logprobs`
    (no gradients, eval mode, a peft model's adapters disabled). Both give the same numbers.

    Args:
        model: the reference model, for log-probs computed on the fly.
        table: (N, 2) precomputed log-probs of each pair's chosen and rejected response.
    """

    def __init__(self, *, model: nn.Module | None = None, table: Tensor | None = None):
        self.model = model
        self.table = table

    @classmethod
    def precompute(
        cls,
        model: nn.Module,
        pairs: list[TokenizedPair],
        pad_token_id: int,
        batch_size: int,
        device: torch.device,
        bucket_overhead: int | None = None,
    ) -> Reference:
        """One pass of `model` over `pairs`, kept as a table indexed by pair.

        The pairs are visited longest first, so each forward holds pairs of similar length and
        pads little (a pair's log-probs do not depend on the pairs beside it).

        Args:
            model: the reference model (or a peft model whose base is the reference).
            pairs: every pair of a split, in the order later lookups index.
            pad_token_id: padding id.
            batch_size: pairs per forward.
            device: where `model` is; the table stays there.
            bucket_overhead: `collate_pairs`' ``bucket_overhead_tokens``.

        Returns:
            A table-backed `Reference`.
        """
        on_the_fly = cls(model=model)
        table = torch.zeros(len(pairs), 2, device=device)  # (N, 2)
        by_length = sorted(range(len(pairs)), key=lambda i: -_pair_length(pairs[i]))
        for start in range(0, len(pairs), batch_size):
            indices = by_length[start : start + batch_size]
            batch = collate_pairs([pairs[i] for i in indices], pad_token_id, bucket_overhead_tokens=bucket_overhead)
            table[torch.tensor(indices, device=device)] = on_the_fly.logps(batch.to(device)).reshape(2, -1).T
        return cls(table=table)

    def logps(self, batch: PreferenceBatch, indices: list[int] | None = None) -> Tensor:
        """(2B,) reference log-probs of a batch's rows, chosen rows first.

        Args:
            batch: B pairs as 2B rows.
            indices: the B pairs' positions in the split (needed for a table).

        Returns:
            (2B,) float32 summed log-probs of each row's response.
        """
        if self.table is None:
            return reference_sequence_logprobs(
                self.model, batch.input_ids, batch.attention_mask, batch.loss_mask, buckets=batch.buckets
            )
        rows = self.table[indices]  # (B, 2)
        return torch.cat([rows[:, 0], rows[:, 1]])  # (2B,)


def pair_losses_and_stats(
    policy: nn.Module, batch: PreferenceBatch, ref_logps: Tensor, hp: DPOHyperparameters
) -> tuple[Tensor, Tensor]:
    """DPO losses of a batch of pairs, and the per-pair statistics behind the metrics.

    Chosen and rejected rows go through one policy forward. For the ``ipo`` loss, policy and
    reference log-probs are divided by the response length before the loss (Azar et al. 2023,
    eq. 17), and the ``logps/*`` statistics are those averages.

    Args:
        policy: the model being trained.
        batch: B pairs as 2B rows, chosen first.
        ref_logps: (2B,) summed reference log-probs of the same rows.
        hp: supplies β, the loss type and the label smoothing.

    Returns:
        losses: (B,) differentiable DPO loss per pair.
        stats: (S, B) detached statistics in `TRAIN_METRICS` order.
    """
    b = batch.num_pairs
    logps = sequence_logprob_totals(
        policy, batch.input_ids, batch.attention_mask, batch.loss_mask, batch.buckets
    )  # (2B,) rows of similar length share a forward
    if hp.loss_type == "ipo":
        counts = scored_token_counts(batch.loss_mask)  # (2B,) the same tokens under π and π_ref
        logps, ref_logps = logps / counts, ref_logps / counts
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], hp.beta, hp.loss_type, hp.label_smoothing
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
    reference: Reference,
    pairs: list[TokenizedPair],
    pad_token_id: int,
    hp: DPOHyperparameters,
    device: torch.device,
    bucket_overhead: int | None = None,
) -> dict[str, float]:
    """Mean DPO statistics over evaluation pairs, as ``eval/<name>`` metrics.

    Args:
        policy: the model being trained (put in eval mode for the duration).
        reference: the reference log-probs of `pairs`.
        pairs: tokenised evaluation pairs.
        pad_token_id: padding id.
        hp: supplies β, the loss type and the batch size.
        device: where the models are.
        bucket_overhead: `collate_pairs`' ``bucket_overhead_tokens``.

    Returns:
        ``{"eval/loss": ..., "eval/rewards/accuracies": ..., ...}``.
    """
    was_training = policy.training
    policy.eval()
    size = _pass_batch_size(hp)
    sums = torch.zeros(len(EVAL_METRICS), device=device)  # (S,)
    for start in range(0, len(pairs), size):
        indices = list(range(start, min(start + size, len(pairs))))
        batch = collate_pairs([pairs[i] for i in indices], pad_token_id, bucket_overhead_tokens=bucket_overhead)
        batch = batch.to(device)
        _, stats = pair_losses_and_stats(policy, batch, reference.logps(batch, indices), hp)  # (S, b)
        sums += stats.sum(dim=1)
    policy.train(was_training)
    return dict(zip(EVAL_METRICS, (sums / len(pairs)).tolist(), strict=True))


def _reference_model(policy: nn.Module, job: DPOJob, *, resumed: bool, device: torch.device) -> nn.Module:
    """A model whose log-probs are π_ref's, the job's base model, with as few copies as possible."""
    if isinstance(policy, PeftModel):
        return policy  # the base under the adapters; `reference_sequence_logprobs` disables them
    if resumed:
        model, _ = load_policy(job.base_model)  # the policy has moved away from it
    elif job.hyperparameters.precompute_ref_logprobs:
        return policy  # read once, before the first step changes it
    else:
        model = copy.deepcopy(policy)
    return model.to(device).eval().requires_grad_(False)


def _pass_batch_size(hp: DPOHyperparameters) -> int:
    """Pairs per forward in gradient-free passes: the size of a training micro-batch."""
    return max(1, hp.batch_size // hp.gradient_accumulation_steps)


def _pair_length(pair: TokenizedPair) -> int:
    """Tokens of the longer of a pair's two rows."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))
