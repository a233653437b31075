"""Supervised fine-tuning: next-token cross-entropy on the assistant turns of chat rows (DESIGN §7, SFT).

One loop in numbered sections; the set-up is `trainers.run_setup`'s (model, LoRA, precision,
processes, resume), the optimisation plumbing `trainers.loop`'s (AdamW and its schedule, stop,
the update guard, cadence, checkpoints). Rows are tokenised once (`trainers.data.chat`: the chat
template, the assistant-token mask, truncation). The loss of an optimizer step is
``Σ nll / N`` over its trained tokens, N counted over the whole step (every micro-batch and
process), so results do not depend on gradient accumulation or the number of processes
(`trainers.ops.token_losses`). With ``packing`` the rows of a micro-batch run end to end in
sequences of up to ``max_length`` tokens: the same loss, less padding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from trainers.data.batching import BatchOrder, split_micro_batches
from trainers.data.chat import ChatBatch, ChatLayout, TokenizedChat
from trainers.distributed.ranks import Ranks
from trainers.ops.token_losses import next_token_losses
from trainers.run_setup import micro_batch_size, prepare_run
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import SFTHyperparameters, SFTJob
from trainers.spec.results import RunResult, TrainingData
from trainers.token_count import TokenCount

# Per-token statistics, in the order `accumulate_gradients` returns them (means over the step's
# trained tokens); eval metrics are the same under `eval/`.
TRAIN_METRICS = ("train/loss", "train/mean_token_accuracy")
EVAL_METRICS = ("eval/loss", "eval/mean_token_accuracy")


def train_sft(
    job: SFTJob, data: TrainingData, callbacks: Callbacks, *, resume_from: str | Path | None = None
) -> RunResult:
    """Fine-tune a causal LM on chat rows (conversations, or prompts and completions).

    1. Set up the run (`prepare_run`): the model, the rows tokenised with their loss masks; their order.
    2. The training loop (`TrainingLoop`), and the tokens trained before a resume. Then, step after step:
    3. stop when asked;
    4. gradients of the step's rows (`accumulate_gradients`);
    5. update, and count the step's tokens;
    6. evaluate when due, and log;
    7. checkpoint when due.

    Args:
        job: the SFT job spec.
        data: canonical chat rows (train, optional eval).
        callbacks: receive the metrics, checkpoints and events; polled for a stop request.
        resume_from: an SFT checkpoint to continue from, or None.

    Returns:
        The status, step and metrics the run ended with; `trainers.run` lists the errors it raises.
    """
    hp = job.hyperparameters

    # 1. The model (fresh adapters for LoRA, or the checkpoint's model) and the rows, tokenised once
    #    with their loss masks. The rows of step s are a pure function of (seed, s).
    run = prepare_run(job, data, callbacks, resume_from=resume_from)
    model, pad, device, ranks = run.model, run.tokenizer.pad_token_id, run.device, run.ranks
    order = BatchOrder(num_rows=len(run.train), batch_size=hp.batch_size, seed=job.seed)
    flat = run.compute.attn_implementation == "flash_attention_2"  # packed rows in one sequence, for FlashAttention
    layout = ChatLayout(pad_token_id=pad, packed=hp.packing, max_length=hp.max_length, flat=flat)

    with run.autocast():  # every forward pass below runs in the job's precision
        # 2. Optimiser, schedule, step and RNG (restored when resuming), cadence and checkpoints;
        #    the tokens trained so far follow from the data order, so a resumed count continues.
        loop = run.training_loop(order.steps_per_epoch)
        tokens = TokenCount.through(order, [len(chat.input_ids) for chat in run.train], loop.step)
        metrics: dict[str, float] = {}

        while loop.step < loop.total_steps:
            # 3. Cooperative stop, polled once per step: keep the progress, then return.
            if loop.stop_requested():
                return loop.stop(metrics)
            step = loop.next_step()
            indices = order.step_indices(step)

            # 4. Gradients of the step's rows: Σ nll over their trained tokens / the step's count of them.
            stats = accumulate_gradients(model, run.train, indices, hp, device, layout, backward=loop.backward,
                                         ranks=ranks)  # fmt: skip

            # 5. Update: clip, refuse non-finite values, step the optimiser and the schedule.
            metrics = loop.update(stats, TRAIN_METRICS) | tokens.add_rows(indices)

            # 6. Evaluation every `eval_every` steps, at checkpoints and at the end, reported with
            #    the train metrics of its step.
            evaluated = bool(run.eval) and loop.eval_due()
            if evaluated:
                metrics |= evaluate(model, run.eval, hp, device, layout, ranks)
            loop.log(metrics, evaluated=evaluated)

            # 7. Checkpoint every `checkpoint_every` steps and at the end.
            if loop.checkpoint_due():
                loop.checkpoint(metrics)

        return loop.finish(metrics)


def token_losses(model: nn.Module, batch: ChatBatch) -> tuple[Tensor, Tensor]:
    """One forward pass over a batch: per-token negative log-likelihood and accuracy of its trained tokens.

    Args:
        model: the causal LM.
        batch: padded or packed rows (`ChatLayout.collate`).

    Returns:
        nll: (b, W − 1) masked, differentiable; correct: (b, W − 1) masked, detached (`next_token_losses`).
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                   use_cache=False).logits  # (b, W, V)  # fmt: skip
    return next_token_losses(logits, batch.input_ids, batch.loss_mask)


def accumulate_gradients(
    model: nn.Module,
    chats: list[TokenizedChat],
    indices: list[int],
    hp: SFTHyperparameters,
    device: torch.device,
    layout: ChatLayout,
    *,
    backward: Callable[[Tensor], None] = Tensor.backward,
    ranks: Ranks | None = None,
) -> Tensor:
    """Backward the SFT loss of one optimizer step, micro-batch by micro-batch.

    Each micro-batch's summed nll is divided by N, the trained tokens of the whole step (known
    from the tokenised rows, so every rank has it without communication), so the gradients add up
    to those of the step's mean per-token loss whatever `gradient_accumulation_steps` and the
    number of processes are. Each rank takes its share of every micro-batch (`Ranks.batch_share`).

    Args:
        model: the model being trained; gradients accumulate into its parameters.
        chats: the tokenised training rows.
        indices: the step's rows (positions in `chats`).
        hp: supplies the number of micro-batches.
        device: where the model is.
        layout: how micro-batches are laid out (padded or packed).
        backward: runs a loss's backward pass (`TrainingLoop.backward`: fp16 scaling, world size).
        ranks: the job's processes (default: one).

    Returns:
        (2,) the step's loss and mean token accuracy (`TRAIN_METRICS`), on the device; on several
        ranks, this rank's share of them (`TrainingLoop.update` sums them).
    """
    ranks = ranks or Ranks()
    count = max(1, sum(chats[i].num_loss_tokens for i in indices))  # N, over the whole step
    sums = torch.zeros(len(TRAIN_METRICS), device=device)  # (2,) Σ nll, Σ correct
    for micro in split_micro_batches(indices, hp.gradient_accumulation_steps):
        mine, weight = ranks.batch_share(micro)
        nll, correct = token_losses(model, layout.collate([chats[i] for i in mine]).to(device))  # (b, W−1) each
        backward(weight * nll.sum() / count)
        sums += weight * torch.stack([nll.detach().sum(), correct.sum()])
    return sums / count


@torch.no_grad()
def evaluate(
    model: nn.Module,
    chats: list[TokenizedChat],
    hp: SFTHyperparameters,
    device: torch.device,
    layout: ChatLayout,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Per-token loss and accuracy over the evaluation rows, as ``eval/`` metrics (each rank scores its share).

    Args:
        model: the model being trained (put in eval mode for the duration).
        chats: tokenised evaluation rows.
        hp: supplies the batch size.
        device: where the model is.
        layout: as for `accumulate_gradients`.
        ranks: the job's processes (default: one).

    Returns:
        ``{"eval/loss": ..., "eval/mean_token_accuracy": ...}`` over every trained token of the rows.
    """
    ranks = ranks or Ranks()
    was_training = model.training
    model.eval()
    size = micro_batch_size(hp) * ranks.world_size
    sums = torch.zeros(len(EVAL_METRICS), device=device)  # (2,)
    for start in range(0, len(chats), size):
        indices, weight = ranks.batch_share(range(start, min(start + size, len(chats))))
        nll, correct = token_losses(model, layout.collate([chats[i] for i in indices]).to(device))
        sums += weight * torch.stack([nll.sum(), correct.sum()])
    model.train(was_training)
    count = max(1, sum(chat.num_loss_tokens for chat in chats))
    return dict(zip(EVAL_METRICS, (ranks.sum(sums) / count).tolist(), strict=True))
