"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306).

KTO trains on single completions labelled desirable or undesirable (feedback rows; a preference
pair is read as one of each). One loop in numbered sections; the set-up is `trainers.run_setup`'s,
the optimisation plumbing `trainers.loop`'s, and the reference log-probs are computed as DPO
computes its own (`trainers.dpo.Reference`): by default in one pass before training, for each
example and for its mismatched pair, so no reference model is in memory while training.

The reference point z_ref (`trainers.ops.unpaired_losses.kto_reference_point`) is estimated once
per optimizer step from the mismatched pairs of ALL the step's examples, summed over its
micro-batches and processes before it is divided, so it does not depend on micro-batching or on the
number of processes. TRL estimates it per device batch (and averages over devices), which is the
same when a step is one micro-batch. As in TRL, the policy's log-probs of the mismatched pairs are
computed without gradients, in a pass of their own before the step's losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers.data.batching import BatchOrder, bucket_overhead_tokens, split_micro_batches
from trainers.data.feedback import FeedbackBatch, TokenizedExample, collate_feedback
from trainers.distributed.ranks import Ranks
from trainers.dpo import Reference
from trainers.ops.logprobs import reference_sequence_logprobs, sequence_logprob_totals
from trainers.ops.unpaired_losses import kto_loss, kto_reference_point
from trainers.run_setup import micro_batch_size, prepare_run
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import KTOJob
from trainers.spec.kto import KTOHyperparameters
from trainers.spec.results import RunResult, TrainingData
from trainers.token_count import TokenCount

# TRL's KTO metric names; the rewards and log-probs of each side are means over that side's examples
# (a step without one side reports none of its metrics), `kl` is the step's z_ref.
TRAIN_METRICS = ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
                 "logps/rejected", "kl")  # fmt: skip
EVAL_METRICS = tuple("eval/" + name.removeprefix("train/") for name in TRAIN_METRICS)
_CHOSEN = ("rewards/chosen", "logps/chosen", "rewards/margins")  # need a desirable example
_REJECTED = ("rewards/rejected", "logps/rejected", "rewards/margins")  # need an undesirable one


def train_kto(
    job: KTOJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Train a policy with KTO on feedback rows (or preference rows, two examples each).

    1. Set up the run (`prepare_run`): the policy, the examples tokenised with their mismatched
       pairs, π_ref; the examples' order.
    2. Reference log-probs: a table computed once, or π_ref run on every batch.
    3. The training loop (`TrainingLoop`), and the tokens trained before a resume. Then, step after step:
    4. stop when asked;
    5. z_ref over the step's mismatched pairs, then the gradients of its examples (`accumulate_gradients`);
    6. update, and count the step's tokens;
    7. evaluate when due, and log;
    8. checkpoint when due.

    Args:
        job: the KTO job spec.
        data: canonical feedback (or preference) rows: train, optional eval.
        callbacks: receive the metrics, checkpoints and events; polled for a stop request.
        resume_from: a KTO checkpoint to continue from, or None.

    Returns:
        The status, step and metrics the run ended with; `trainers.run` lists the errors it raises.
    """
    hp = job.hyperparameters

    # 1. The policy, the examples tokenised once (with the mismatched completion each is paired
    #    with for the KL estimate), and π_ref. The examples of step s are a pure function of (seed, s).
    reference = "before_training" if hp.precompute_ref_logprobs else "during_training"
    run = prepare_run(job, data, callbacks, resume_from=resume_from, reference=reference)
    policy, pad, device, ranks = run.model, run.tokenizer.pad_token_id, run.device, run.ranks
    order = BatchOrder(num_rows=len(run.train), batch_size=hp.batch_size, seed=job.seed)
    # One forward per micro-batch on several ranks (each forward of a parallel model is a collective).
    overhead = None if ranks.distributed else bucket_overhead_tokens(device.type)

    with run.autocast():  # every forward pass below runs in the job's precision
        # 2. Reference log-probs of every example and of its mismatched pair: precomputed in one pass
        #    (no reference model kept), or a model that computes them on every batch.
        if hp.precompute_ref_logprobs:
            size = run.micro_batch_size
            train_reference = FeedbackReference.precompute(run.reference, run.train, pad, size, device, overhead, ranks)
            eval_reference = FeedbackReference.precompute(run.reference, run.eval, pad, size, device, overhead, ranks)
            callbacks.on_event("info", f"precomputed reference log-probs of {len(run.train) + len(run.eval)} "
                                       "examples and their mismatched pairs")  # fmt: skip
            run.reference = None
        else:
            train_reference = eval_reference = FeedbackReference(model=run.reference)

        # 3. Optimiser, schedule, step and RNG (restored when resuming), cadence and checkpoints;
        #    the tokens trained so far follow from the data order, so a resumed count continues. The
        #    policy reads each example twice a step: prompt + completion, prompt + mismatched completion.
        loop = run.training_loop(order.steps_per_epoch)
        lengths = [2 * len(e.prompt_ids) + len(e.completion_ids) + len(e.kl_completion_ids) for e in run.train]
        tokens = TokenCount.through(order, lengths, loop.step)
        metrics: dict[str, float] = {}

        while loop.step < loop.total_steps:
            # 4. Cooperative stop, polled once per step: keep the progress, then return.
            if loop.stop_requested():
                return loop.stop(metrics)
            step = loop.next_step()

            # 5. z_ref over the step's mismatched pairs, then the gradients of the step's mean loss,
            #    whatever the micro-batching.
            indices = order.step_indices(step)
            micro_batches = split_micro_batches(indices, hp.gradient_accumulation_steps)
            stats = accumulate_gradients(policy, train_reference, run.train, micro_batches, pad, hp, device,
                                         overhead, backward=loop.backward, ranks=ranks)  # fmt: skip

            # 6. Update: clip, refuse non-finite values, step the optimiser and the schedule.
            metrics = present_metrics(loop.update(stats, TRAIN_METRICS), [run.train[i] for i in indices])
            metrics |= tokens.add_rows(indices)

            # 7. Metrics per step; evaluation every `eval_every` steps, at checkpoints and at the end.
            evaluated = bool(run.eval) and loop.eval_due()
            if evaluated:
                metrics |= evaluate(policy, eval_reference, run.eval, pad, hp, device, overhead, ranks)
            loop.log(metrics, evaluated=evaluated)

            # 8. Checkpoint every `checkpoint_every` steps and at the end.
            if loop.checkpoint_due():
                loop.checkpoint(metrics)

        return loop.finish(metrics)


class FeedbackReference:
    """Summed completion log-probs under π_ref of examples and of their mismatched pairs.

    Either DPO's table (`Reference.precompute` over `TokenizedExample.as_pair`: column 0 the
    examples, column 1 their mismatched pairs), or a model run on each batch with
    `reference_sequence_logprobs`. Both give the same numbers.

    Args:
        model: the reference model, for log-probs computed on the fly.
        table: (N, 2) precomputed log-probs of each example and of its mismatched pair.
    """

    def __init__(self, *, model: nn.Module | None = None, table: Tensor | None = None):
        self.model = model
        self.table = table

    @classmethod
    def precompute(
        cls,
        model: nn.Module,
        examples: Sequence[TokenizedExample],
        pad_token_id: int,
        batch_size: int,
        device: torch.device,
        bucket_overhead: int | None = None,
        ranks: Ranks | None = None,
    ) -> FeedbackReference:
        """One pass of `model` over the examples and their mismatched pairs (`Reference.precompute`).

        Args:
            model: the reference model (or a peft model whose base is the reference).
            examples: every example of a split, in the order later lookups index.
            pad_token_id: padding id.
            batch_size: examples per forward (each forward holds their two rows).
            device: where `model` is; the table stays there.
            bucket_overhead: `collate_pairs`' ``bucket_overhead_tokens``.
            ranks: the job's processes (default: one).

        Returns:
            A table-backed `FeedbackReference`.
        """
        pairs = [example.as_pair() for example in examples]
        table = Reference.precompute(model, pairs, pad_token_id, batch_size, device, bucket_overhead, ranks).table
        return cls(table=table)

    def logps(self, batch: FeedbackBatch, indices: list[int], *, kl: bool) -> Tensor:
        """(B,) reference log-probs of a batch's rows: the examples `indices`, or their mismatched pairs (``kl``)."""
        if self.table is None:
            return reference_sequence_logprobs(self.model, batch.input_ids, batch.attention_mask, batch.loss_mask,
                                               buckets=batch.buckets)  # fmt: skip
        return self.table[indices, int(kl)]  # (B,)


def reference_point(
    policy: nn.Module,
    reference: FeedbackReference,
    examples: Sequence[TokenizedExample],
    micro_batches: list[list[int]],
    pad_token_id: int,
    device: torch.device,
    bucket_overhead: int | None,
    ranks: Ranks,
) -> Tensor:
    """z_ref of a set of examples: their mismatched pairs' mean log-ratio over every micro-batch and rank, clamped at 0.

    Args:
        policy: the model being trained (its log-probs here carry no gradient, as in TRL).
        reference: the reference log-probs of `examples`.
        examples: the tokenised examples.
        micro_batches: the examples of the set (positions in `examples`), as they are run.
        pad_token_id: padding id.
        device: where the policy is.
        bucket_overhead: `collate_feedback`'s ``bucket_overhead_tokens``.
        ranks: the job's processes; each runs its share of every micro-batch, the sum is all-reduced.

    Returns:
        () detached z_ref, the same on every rank.
    """
    total = torch.zeros((), device=device)  # Σ log π(y'|x) − log π_ref(y'|x)
    with torch.no_grad():
        for micro in micro_batches:
            mine, weight = ranks.batch_share(micro)
            batch = collate_feedback([examples[i] for i in mine], pad_token_id, kl=True,
                                     bucket_overhead_tokens=bucket_overhead).to(device)  # fmt: skip
            logps = sequence_logprob_totals(policy, batch.input_ids, batch.attention_mask, batch.loss_mask,
                                            batch.buckets)  # (b,)  # fmt: skip
            total += weight * (logps - reference.logps(batch, mine, kl=True)).sum()
    return kto_reference_point(ranks.sum(total), sum(len(micro) for micro in micro_batches))


def accumulate_gradients(
    policy: nn.Module,
    reference: FeedbackReference,
    examples: Sequence[TokenizedExample],
    micro_batches: list[list[int]],
    pad_token_id: int,
    hp: KTOHyperparameters,
    device: torch.device,
    bucket_overhead: int | None = None,
    *,
    backward: Callable[[Tensor], None] | None = Tensor.backward,
    ranks: Ranks | None = None,
) -> Tensor:
    """Backward the KTO loss of one optimizer step (or score a set without gradients), micro-batch by micro-batch.

    First z_ref over all the step's mismatched pairs (`reference_point`); then each micro-batch's
    summed weighted losses, divided by the number of examples in the step, so the gradients add up
    to those of the step's mean loss whatever the micro-batching. On several ranks each takes its
    share of every micro-batch and still divides by the whole step's counts.

    Args:
        policy: the model being trained; gradients accumulate into its parameters.
        reference: the reference log-probs of `examples`.
        examples: the tokenised examples.
        micro_batches: the step's examples (positions in `examples`), one list per forward.
        pad_token_id: padding id.
        hp: supplies β and the weights.
        device: where the policy is.
        bucket_overhead: `collate_feedback`'s ``bucket_overhead_tokens``.
        backward: runs a loss's backward pass (`TrainingLoop.backward`); None computes no gradients.
        ranks: the job's processes (default: one).

    Returns:
        (S,) the statistics in `TRAIN_METRICS` order on the device: the loss averaged over the step's
        examples, rewards and log-probs over those of their side (0 for a side the step lacks),
        and z_ref; on several ranks, this rank's share of each (`TrainingLoop.update` sums them).
    """
    ranks = ranks or Ranks()
    z = reference_point(policy, reference, examples, micro_batches, pad_token_id, device, bucket_overhead, ranks)
    count = sum(len(micro) for micro in micro_batches)
    desirable = sum(examples[i].desirable for micro in micro_batches for i in micro)
    sides = torch.tensor([max(desirable, 1), max(count - desirable, 1)], dtype=torch.float32, device=device)  # (2,)
    sums = torch.zeros(5, device=device)  # loss, chosen and rejected rewards, chosen and rejected log-probs
    for micro in micro_batches:
        mine, weight = ranks.batch_share(micro)
        batch = collate_feedback([examples[i] for i in mine], pad_token_id, kl=False,
                                 bucket_overhead_tokens=bucket_overhead).to(device)  # fmt: skip
        with torch.set_grad_enabled(backward is not None):
            logps = sequence_logprob_totals(policy, batch.input_ids, batch.attention_mask, batch.loss_mask,
                                            batch.buckets)  # (b,)  # fmt: skip
            losses, rewards = kto_loss(logps, reference.logps(batch, mine, kl=False), batch.desirable, z, hp.beta,
                                       hp.desirable_weight, hp.undesirable_weight)  # (b,) each  # fmt: skip
        if backward is not None:
            backward(weight * losses.sum() / count)
        good, bad = batch.desirable.float(), (~batch.desirable).float()  # (b,) each
        logps = logps.detach()
        sums += weight * torch.stack([losses.detach().sum(), (rewards * good).sum(), (rewards * bad).sum(),
                                      (logps * good).sum(), (logps * bad).sum()])  # fmt: skip
    loss, chosen, rejected, chosen_logps, rejected_logps = sums / torch.cat([sums.new_tensor([count]), sides, sides])
    # z is the same on every rank: each reports its 1/world_size share, which `update` sums back.
    return torch.stack([loss, chosen, rejected, chosen - rejected, chosen_logps, rejected_logps,
                        z / ranks.world_size])  # fmt: skip


def present_metrics(metrics: dict[str, float], examples: Sequence[TokenizedExample], prefix: str = "") -> dict:
    """`metrics` without those of a side (desirable, undesirable) that none of `examples` is on."""
    absent = set()
    if not any(e.desirable for e in examples):
        absent.update(_CHOSEN)
    if all(e.desirable for e in examples):
        absent.update(_REJECTED)
    return {name: value for name, value in metrics.items() if name.removeprefix(prefix) not in absent}


@torch.no_grad()
def evaluate(
    policy: nn.Module,
    reference: FeedbackReference,
    examples: list[TokenizedExample],
    pad_token_id: int,
    hp: KTOHyperparameters,
    device: torch.device,
    bucket_overhead: int | None = None,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """KTO statistics over all evaluation examples (one z_ref for the whole split), as ``eval/<name>`` metrics.

    Args:
        policy: the model being trained (put in eval mode for the duration).
        reference: the reference log-probs of `examples`.
        examples: tokenised evaluation examples.
        pad_token_id: padding id.
        hp: supplies β, the weights and the batch size.
        device: where the models are.
        bucket_overhead: `collate_feedback`'s ``bucket_overhead_tokens``.
        ranks: the job's processes (default: one); each scores its share.

    Returns:
        ``{"eval/loss": ..., "eval/rewards/chosen": ..., "eval/kl": ...}``, over all the examples on every rank.
    """
    ranks = ranks or Ranks()
    was_training = policy.training
    policy.eval()
    size = micro_batch_size(hp) * ranks.world_size
    chunks = [list(range(start, min(start + size, len(examples)))) for start in range(0, len(examples), size)]
    stats = accumulate_gradients(policy, reference, examples, chunks, pad_token_id, hp, device, bucket_overhead,
                                 backward=None, ranks=ranks)  # fmt: skip
    policy.train(was_training)
    values = ranks.sum(stats).tolist()
    return present_metrics(dict(zip(EVAL_METRICS, values, strict=True)), examples, prefix="eval/")
