"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

One loop in numbered sections; the set-up is `trainers.run_setup`'s, the optimisation plumbing (AdamW
with linear warmup then a constant rate, resume, stop, the update guard, cadence and checkpoints)
is `trainers.loop`'s. The
reference policy π_ref is the job's base model. By default its log-probs are computed in one pass
before training and kept as a table, so no reference model is in memory while training; with
``precompute_ref_logprobs=False`` they are computed on the fly, in the same micro-batches as the
policy's. With LoRA the reference is the policy with its adapters disabled: there is never a
second copy of the weights.

The reference-free losses ``simpo`` (Meng et al. 2024, https://arxiv.org/abs/2405.14734) and ``orpo``
(Hong et al. 2024, https://arxiv.org/abs/2403.07691; also its own job type, `train_orpo`) run the
same loop with no reference at all: no reference model is built and no reference log-probs computed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.data.batching import BatchOrder, bucket_overhead_tokens, split_micro_batches
from trainers.data.preference import PreferenceBatch, TokenizedPair, collate_pairs
from trainers.distributed.ranks import Ranks
from trainers.ops.logprobs import reference_sequence_logprobs, scored_token_counts, sequence_logprob_totals
from trainers.ops.pairwise_losses import dpo_loss, orpo_loss, simpo_loss
from trainers.run_setup import micro_batch_size, prepare_run
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import DPOHyperparameters, DPOJob, ORPOHyperparameters, ORPOJob
from trainers.spec.results import RunResult, TrainingData
from trainers.token_count import TokenCount

# Per-pair statistics, in the order `pair_losses_and_stats` stacks them; eval metrics are the same
# under `eval/` (eval/loss, eval/rewards/chosen, ...; `eval_metrics`).
TRAIN_METRICS = ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected")  # fmt: skip
# What the orpo loss adds, as TRL's ORPOTrainer logs them: the SFT term, log σ of the log odds ratio, the ratio.
ORPO_METRICS = ("train/nll_loss", "train/log_odds_ratio", "train/log_odds_chosen")


def train_metrics(loss_type: str) -> tuple[str, ...]:
    """Names of `pair_losses_and_stats`' statistics for a loss type, in order."""
    return TRAIN_METRICS + ORPO_METRICS if loss_type == "orpo" else TRAIN_METRICS


def eval_metrics(loss_type: str) -> tuple[str, ...]:
    """The same statistics over the evaluation pairs: ``eval/loss``, ``eval/rewards/chosen``, ..."""
    return tuple("eval/" + name.removeprefix("train/") for name in train_metrics(loss_type))


def train_dpo(
    job: DPOJob | ORPOJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a policy with DPO (or SimPO, or ORPO) on preference pairs.

    1. Set up the run (`prepare_run`): the policy, the tokenised pairs, π_ref; the pairs' order.
    2. Reference log-probs: a table computed once, π_ref run on every batch, or none (SimPO, ORPO).
    3. The training loop (`TrainingLoop`), and the tokens trained before a resume. Then, step after step:
    4. stop when asked;
    5. gradients of the step's pairs (`accumulate_gradients`);
    6. update, and count the step's tokens;
    7. evaluate when due, and log;
    8. checkpoint when due.

    Args:
        job: the DPO job spec (or an ORPO job, whose hyperparameters read as a DPO job's).
        data: canonical preference rows (train, optional eval).
        callbacks: receive the metrics, checkpoints and events; polled for a stop request.
        resume_from: a DPO checkpoint to continue from, or None.

    Returns:
        The status, step and metrics the run ended with; `trainers.run` lists the errors it raises.
    """
    hp = job.hyperparameters

    # 1. The policy (fresh adapters for LoRA, or the checkpoint's model), the pairs tokenised once,
    #    and π_ref: the policy itself when it is read only before the first update, none for the
    #    reference-free losses. The pairs of step s are a pure function of (seed, s); pairs of
    #    similar length run as one forward.
    if hp.reference_free:
        reference = None
    else:
        reference = "before_training" if hp.precompute_ref_logprobs else "during_training"
    run = prepare_run(job, data, callbacks, resume_from=resume_from, reference=reference)
    policy, pad, device = run.model, run.tokenizer.pad_token_id, run.device
    order = BatchOrder(num_rows=len(run.train), batch_size=hp.batch_size, seed=job.seed)
    ranks = run.ranks  # each rank takes its share of every micro-batch; statistics are summed over ranks
    # One forward per micro-batch on several ranks: every forward of a parallel model is a collective,
    # and length buckets would give ranks different numbers of them.
    overhead = None if ranks.distributed else bucket_overhead_tokens(device.type)

    with run.autocast():  # every forward pass below runs in the job's precision
        # 2. Reference log-probs: none for SimPO and ORPO; precomputed in one pass (no reference
        #    model kept), or a model that computes them on every batch.
        if hp.reference_free:
            train_reference = eval_reference = None
        elif hp.precompute_ref_logprobs:
            size = run.micro_batch_size
            train_reference = Reference.precompute(run.reference, run.train, pad, size, device, overhead, ranks)
            eval_reference = Reference.precompute(run.reference, run.eval, pad, size, device, overhead, ranks)
            callbacks.on_event("info", f"precomputed reference log-probs of {len(run.train) + len(run.eval)} pairs")
            run.reference = None  # a precomputed run keeps no reference model from now on
        else:
            train_reference = eval_reference = Reference(model=run.reference)

        # 3. Optimiser, schedule, step and RNG (restored when resuming), cadence and checkpoints;
        #    the tokens trained so far (a pair's two rows, prompt + chosen and prompt + rejected)
        #    follow from the data order, so a resumed count continues.
        loop = run.training_loop(order.steps_per_epoch)
        lengths = [2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in run.train]
        tokens = TokenCount.through(order, lengths, loop.step)
        metrics: dict[str, float] = {}
        train_metric_names = train_metrics(hp.loss_type)  # orpo's add its SFT term and log odds

        while loop.step < loop.total_steps:
            # 4. Cooperative stop, polled once per step: keep the progress, then return.
            if loop.stop_requested():
                return loop.stop(metrics)
            indices = order.step_indices(loop.next_step())

            # 5. Gradients of the step's pairs, the mean over them whatever the micro-batching.
            stats = accumulate_gradients(policy, train_reference, run.train, indices, pad, hp, device, overhead,
                                         backward=loop.backward, ranks=ranks)  # fmt: skip

            # 6. Update: clip, refuse non-finite values, step the optimiser and the schedule.
            metrics = loop.update(stats, train_metric_names) | tokens.add_rows(indices)

            # 7. Metrics: per step, averaged over the step's pairs; evaluation every `eval_every`
            #    steps, at checkpoints and at the end, reported with the train metrics of its step.
            evaluated = bool(run.eval) and loop.eval_due()
            if evaluated:
                metrics |= evaluate(policy, eval_reference, run.eval, pad, hp, device, overhead, ranks)
            loop.log(metrics, evaluated=evaluated)

            # 8. Checkpoint every `checkpoint_every` steps and at the end.
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
        ranks: Ranks | None = None,
    ) -> Reference:
        """One pass of `model` over `pairs`, kept as a table indexed by pair.

        The pairs are visited longest first, so each forward holds pairs of similar length and
        pads little (a pair's log-probs do not depend on the pairs beside it). On several ranks
        each computes its share of every batch and the table is summed over ranks: every rank
        ends with the whole table.

        Args:
            model: the reference model (or a peft model whose base is the reference).
            pairs: every pair of a split, in the order later lookups index.
            pad_token_id: padding id.
            batch_size: pairs per forward.
            device: where `model` is; the table stays there.
            bucket_overhead: `collate_pairs`' ``bucket_overhead_tokens``.
            ranks: the job's processes (default: one).

        Returns:
            A table-backed `Reference`.
        """
        ranks = ranks or Ranks()
        on_the_fly = cls(model=model)
        table = torch.zeros(len(pairs), 2, device=device)  # (N, 2)
        by_length = sorted(range(len(pairs)), key=lambda i: -_pair_length(pairs[i]))
        for start in range(0, len(pairs), batch_size * ranks.world_size):
            indices, weight = ranks.batch_share(by_length[start : start + batch_size * ranks.world_size])
            batch = collate_pairs([pairs[i] for i in indices], pad_token_id, bucket_overhead_tokens=bucket_overhead)
            logps = on_the_fly.logps(batch.to(device)).reshape(2, -1).T  # (b, 2)
            table[torch.tensor(indices, device=device)] += weight * logps
        return cls(table=ranks.sum(table))

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
    policy: nn.Module,
    batch: PreferenceBatch,
    ref_logps: Tensor | None,
    hp: DPOHyperparameters | ORPOHyperparameters,
) -> tuple[Tensor, Tensor]:
    """Preference losses of a batch of pairs, and the per-pair statistics behind the metrics.

    Chosen and rejected rows go through one policy forward. For the ``ipo`` loss, policy and
    reference log-probs are divided by the response length before the loss (Azar et al. 2023,
    eq. 17); ``simpo`` and ``orpo`` take length-normalised policy log-probs and no reference. The
    ``logps/*`` statistics are the log-probs the loss took (sums, or averages for those three).

    Args:
        policy: the model being trained.
        batch: B pairs as 2B rows, chosen first.
        ref_logps: (2B,) summed reference log-probs of the same rows; None for ``simpo`` and ``orpo``.
        hp: supplies β, the loss type, the label smoothing and SimPO's γ.

    Returns:
        losses: (B,) differentiable loss per pair.
        stats: (S, B) detached statistics in `train_metrics(hp.loss_type)` order.
    """
    b = batch.num_pairs
    logps = sequence_logprob_totals(
        policy, batch.input_ids, batch.attention_mask, batch.loss_mask, batch.buckets
    )  # (2B,) rows of similar length share a forward
    orpo_stats: list[Tensor] = []
    match hp.loss_type:
        case "sigmoid" | "hinge":
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], hp.beta, hp.loss_type, hp.label_smoothing
            )  # (B,) each
        case "ipo":
            counts = scored_token_counts(batch.loss_mask)  # (2B,) the same tokens under π and π_ref
            logps, ref_logps = logps / counts, ref_logps / counts
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], hp.beta, hp.loss_type
            )  # (B,) each
        case "simpo":
            logps = logps / scored_token_counts(batch.loss_mask)  # (2B,) log π(y|x)/|y|
            losses, chosen_rewards, rejected_rewards = simpo_loss(
                logps[:b], logps[b:], hp.beta, hp.simpo_gamma, hp.label_smoothing
            )  # (B,) each
        case "orpo":
            logps = logps / scored_token_counts(batch.loss_mask)  # (2B,) log P(y|x), P length-normalised
            losses, chosen_rewards, rejected_rewards, log_odds = orpo_loss(logps[:b], logps[b:], hp.beta)
            orpo_stats = [-logps[:b].detach(), F.logsigmoid(log_odds), log_odds]  # (B,) each
        case _:
            raise ValueError(f"unknown preference loss type {hp.loss_type!r}")
    stats = torch.stack(
        [
            losses.detach(),
            chosen_rewards,
            rejected_rewards,
            (chosen_rewards > rejected_rewards).float(),
            chosen_rewards - rejected_rewards,
            logps[:b].detach(),
            logps[b:].detach(),
            *orpo_stats,
        ]
    )  # (S, B)
    return losses, stats


def accumulate_gradients(
    policy: nn.Module,
    reference: Reference | None,
    pairs: list[TokenizedPair],
    indices: list[int],
    pad_token_id: int,
    hp: DPOHyperparameters | ORPOHyperparameters,
    device: torch.device,
    bucket_overhead: int | None = None,
    *,
    backward: Callable[[Tensor], None] = Tensor.backward,
    ranks: Ranks | None = None,
) -> Tensor:
    """Backward the preference loss of one optimizer step, micro-batch by micro-batch.

    Each micro-batch's summed loss is divided by the number of pairs in the step, so the gradients
    add up to those of the step's mean loss, whatever `gradient_accumulation_steps` is. On several
    ranks each takes its share of every micro-batch (`Ranks.batch_share`) and still divides by
    the whole step's count: the ranks' gradients and statistics add up to one process's.

    Args:
        policy: the model being trained; gradients accumulate into its parameters.
        reference: the reference log-probs of `pairs`; None for the reference-free losses.
        pairs: the tokenised training pairs.
        indices: the step's pairs (positions in `pairs`).
        pad_token_id: padding id.
        hp: supplies β, the loss type and the number of micro-batches.
        device: where the policy is.
        bucket_overhead: `collate_pairs`' ``bucket_overhead_tokens``.
        backward: runs a loss's backward pass (`TrainingLoop.backward`, which scales it under fp16,
            and by the world size on several ranks).
        ranks: the job's processes (default: one).

    Returns:
        (S,) the per-pair statistics in `train_metrics` order, averaged over the step, on the device;
        on several ranks, this rank's share of those averages (`TrainingLoop.update` sums them).
    """
    ranks = ranks or Ranks()
    sums = torch.zeros(len(train_metrics(hp.loss_type)), device=device)  # (S,) per-pair statistics, summed
    for micro in split_micro_batches(indices, hp.gradient_accumulation_steps):
        mine, weight = ranks.batch_share(micro)
        batch = collate_pairs([pairs[i] for i in mine], pad_token_id, bucket_overhead_tokens=bucket_overhead)
        batch = batch.to(device)
        ref_logps = reference.logps(batch, mine) if reference is not None else None  # (2b,)
        losses, stats = pair_losses_and_stats(policy, batch, ref_logps, hp)  # (b,), (S, b)
        backward(weight * losses.sum() / len(indices))
        sums += weight * stats.sum(dim=1)
    return sums / len(indices)


@torch.no_grad()
def evaluate(
    policy: nn.Module,
    reference: Reference | None,
    pairs: list[TokenizedPair],
    pad_token_id: int,
    hp: DPOHyperparameters | ORPOHyperparameters,
    device: torch.device,
    bucket_overhead: int | None = None,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Mean preference statistics over evaluation pairs, as ``eval/<name>`` metrics (each rank scores its share).

    Args:
        policy: the model being trained (put in eval mode for the duration).
        reference: the reference log-probs of `pairs`; None for the reference-free losses.
        pairs: tokenised evaluation pairs.
        pad_token_id: padding id.
        hp: supplies β, the loss type and the batch size.
        device: where the models are.
        bucket_overhead: `collate_pairs`' ``bucket_overhead_tokens``.
        ranks: the job's processes (default: one).

    Returns:
        ``{"eval/loss": ..., "eval/rewards/accuracies": ..., ...}``, over all the pairs on every rank.
    """
    ranks = ranks or Ranks()
    was_training = policy.training
    policy.eval()
    size = micro_batch_size(hp) * ranks.world_size
    names = eval_metrics(hp.loss_type)
    sums = torch.zeros(len(names), device=device)  # (S,)
    for start in range(0, len(pairs), size):
        indices, weight = ranks.batch_share(range(start, min(start + size, len(pairs))))
        batch = collate_pairs([pairs[i] for i in indices], pad_token_id, bucket_overhead_tokens=bucket_overhead)
        batch = batch.to(device)
        ref_logps = reference.logps(batch, indices) if reference is not None else None  # (2b,)
        _, stats = pair_losses_and_stats(policy, batch, ref_logps, hp)  # (S, b)
        sums += weight * stats.sum(dim=1)
    policy.train(was_training)
    return dict(zip(names, (ranks.sum(sums) / len(pairs)).tolist(), strict=True))


def _pair_length(pair: TokenizedPair) -> int:
    """Tokens of the longer of a pair's two rows."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def train_orpo(
    job: ORPOJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a policy with ORPO (Hong et al. 2024, https://arxiv.org/abs/2403.07691): `train_dpo`'s loop.

    An ORPO job's hyperparameters read as a DPO job's with ``loss_type: "orpo"``
    (`ORPOHyperparameters`), so the loop, its metrics and its checkpoints are DPO's, without a reference.

    Args:
        job: the ORPO job spec.
        data: canonical preference rows (train, optional eval).
        callbacks: receive the metrics, checkpoints and events; polled for a stop request.
        resume_from: an ORPO checkpoint to continue from, or None.

    Returns:
        The status, step and metrics the run ended with.
    """
    return train_dpo(job, data, callbacks, resume_from=resume_from)
