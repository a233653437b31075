"""Plumbing that PPO and GRPO share: seeded rollouts, the frozen reference, gradient-free passes, row slices.

- **Sampling is a function of (seed, rollout).** Rollout i draws its tokens from a generator seeded
  with `sampling_seed(seed, i)`, so a resumed run samples exactly what the uninterrupted run would
  have, with no generator state to carry in a checkpoint (the prompts are a function of the same
  pair, `trainers.data.prompts.PromptOrder`).
- **The reference policy** π_ref is the job's base model: for LoRA, the policy with its adapters
  disabled (no second copy of the weights); otherwise a frozen copy, taken before the first update
  (or loaded again from `base_model` when resuming, as the policy has moved).
- **Gradient-free passes** (old policy, reference) run in eval mode, in groups of rows that pad
  little (`forward_groups`).

Shapes: B sequences, P prompt tokens, A response tokens.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.data.batching import bucket_overhead_tokens, length_buckets
from trainers.data.prompts import TokenizedPrompt
from trainers.models.loading import load_policy
from trainers.rl.response_logprobs import response_logprobs
from trainers.rl.rewards import RewardComputer, decode_completions
from trainers.rl.rollout import Rollout, generate
from trainers.spec.config import GRPOJob, PPOJob, RLHyperparameters

if TYPE_CHECKING:
    from trainers.loop import TrainingLoop

EVAL_ROLLOUT = 0  # the sampling stream of evaluations; training rollouts count from 1


def sampling_seed(seed: int, rollout: int) -> int:
    """Seed of the generator that samples rollout `rollout` of a job seeded with `seed`.

    ``(2·seed + 1)·2²⁰ + rollout``: distinct for every (seed, rollout < 2²⁰) pair, and never equal to
    a seed of `trainers.data.batching.BatchOrder` (``seed·2²⁰ + epoch``) of the same job.

    Args:
        seed: the job's seed.
        rollout: the rollout number (1-based; `EVAL_ROLLOUT` for evaluation).

    Returns:
        A non-negative integer below 2⁶⁴.
    """
    return (2 * seed + 1) * 2**20 + rollout


def stop_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS and the model's generation-config EOS ids.

    Args:
        model: the policy (its ``generation_config.eos_token_id`` may list end-of-turn tokens).
        tokenizer: its tokenizer, which has an EOS token.

    Returns:
        The distinct ids, the tokenizer's EOS first.
    """
    ids = [tokenizer.eos_token_id]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids += [extra] if isinstance(extra, int) else list(extra or [])
    return list(dict.fromkeys(i for i in ids if i is not None and i != tokenizer.pad_token_id))


def sampling_generator(seed: int, rollout: int, device: torch.device) -> torch.Generator:
    """The generator that samples rollout `rollout` of a job seeded with `seed`.

    Args:
        seed: the job's seed.
        rollout: the rollout number (1-based; `EVAL_ROLLOUT` for evaluation).
        device: the policy's device, where sampling draws.

    Returns:
        A fresh generator seeded with `sampling_seed`.
    """
    return torch.Generator(device=device).manual_seed(sampling_seed(seed, rollout))


def sample_rollout(
    policy: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    tokenizer: PreTrainedTokenizerBase,
    hp: RLHyperparameters,
    *,
    generator: torch.Generator,
) -> Rollout:
    """Sample one completion per prompt with the job's sampling settings, in eval mode.

    Args:
        policy: the policy (restored to its previous train/eval mode afterwards).
        prompt_ids: B prompts as token ids (GRPO repeats each prompt G times).
        tokenizer: supplies the pad and EOS ids.
        hp: supplies `max_new_tokens`, `temperature` and `top_p`.
        generator: the only source of randomness (`sampling_generator`), on the policy's device.

    Returns:
        The rollout, on the policy's device.
    """
    was_training = policy.training
    policy.eval()  # dropout off: the sampled distribution is the one later passes score
    try:
        return generate(
            policy, prompt_ids, pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_token_ids(policy, tokenizer),
            max_new_tokens=hp.max_new_tokens, temperature=hp.temperature, top_p=hp.top_p, generator=generator,
        )  # fmt: skip
    finally:
        policy.train(was_training)


def reference_policy(
    policy: nn.Module, job: GRPOJob | PPOJob, *, resumed: bool, device: torch.device
) -> nn.Module:
    """A model whose log-probs are π_ref's (the job's base model), with as few copies as possible.

    Args:
        policy: the policy, before its first update of this run.
        job: supplies `base_model` (reloaded when resuming a full fine-tuning run).
        resumed: whether the policy comes from a checkpoint (and so is no longer the base model).
        device: where the reference runs.

    Returns:
        For LoRA, `policy` itself (`frozen_logprobs` disables its adapters); otherwise a frozen
        model in eval mode on `device`.
    """
    if isinstance(policy, PeftModel):
        return policy
    model = load_policy(job.base_model)[0] if resumed else copy.deepcopy(policy)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def frozen_logprobs(
    model: nn.Module, rollout: Rollout, temperature: float, *, batch_size: int, reference: bool = False
) -> Tensor:
    """`response_logprobs` without gradients, in eval mode, `batch_size` rows at a time.

    Args:
        model: the policy (old log-probs) or the reference model.
        rollout: B sampled responses.
        temperature: τ of the rollout.
        batch_size: rows per forward.
        reference: run a peft model with its adapters disabled, as π_ref.

    Returns:
        (B, A) float32 log-probs, 0 on padding.
    """
    was_training = model.training
    model.eval()
    adapters_off = model.disable_adapter() if reference and isinstance(model, PeftModel) else contextlib.nullcontext()
    with adapters_off:
        out = map_forward_groups(lambda part: response_logprobs(model, part, temperature), rollout, batch_size)
    model.train(was_training)
    return out  # (B, A)


def forward_groups(rollout: Rollout, rows: Sequence[int], max_rows: int) -> list[list[int]]:
    """Some rows of a rollout cut into forward passes of at most `max_rows` rows that pad little.

    Rows that repeat a prompt (GRPO's groups) stay in consecutive chunks, which
    `trainers.rl.response_logprobs.SharedPromptLayout` packs with their prompt computed once. Otherwise (PPO)
    rows are grouped by real length (`trainers.data.batching.length_buckets`): each pass is cut to its
    own longest prompt and response (`select_rows`), so short rows do not pay for long ones.

    Args:
        rollout: B sampled responses.
        rows: the rows to cut, indices into the rollout.
        max_rows: the most rows per pass.

    Returns:
        Lists of row indices covering `rows` once each.
    """
    rows = list(rows)
    index = torch.as_tensor(rows, dtype=torch.long, device=rollout.prompt_mask.device)
    prompt_lengths = rollout.prompt_mask[index].sum(dim=1)  # (n,)
    lengths = (prompt_lengths + rollout.response_lengths[index]).tolist()
    prompt_ids = rollout.prompt_ids[index].tolist()
    prompts = {tuple(ids[len(ids) - n :]) for ids, n in zip(prompt_ids, prompt_lengths.tolist(), strict=True)}
    if len(prompts) < len(rows):  # shared prompts: consecutive chunks
        return [rows[start : start + max_rows] for start in range(0, len(rows), max_rows)]
    groups = length_buckets(lengths, bucket_overhead_tokens(rollout.prompt_ids.device.type), max_rows=max_rows)
    return [[rows[i] for i in group] for group, _ in groups]


def map_forward_groups(fn: Callable[[Rollout], Tensor], rollout: Rollout, batch_size: int) -> Tensor:
    """A per-row pass over every row of a rollout, in `forward_groups` of at most `batch_size` rows.

    Args:
        fn: maps a rollout of b rows (its response columns trimmed to its longest) to (b, a) values.
        rollout: B sampled responses.
        batch_size: the most rows per pass.

    Returns:
        (B, A) the values in row order, 0 past each pass's width.
    """
    B, A = rollout.response_ids.shape
    out = None
    for rows in forward_groups(rollout, range(B), batch_size):
        values = fn(select_rows(rollout, rows))  # (b, a) a <= A
        if out is None:
            out = values.new_zeros((B, A))
        out[torch.as_tensor(rows, device=values.device), : values.shape[1]] = values
    return out  # (B, A)


def select_rows(rollout: Rollout, rows: Sequence[int]) -> Rollout:
    """The rollout restricted to some rows, its padding columns trimmed to the longest kept row.

    Prompt columns that are padding in every kept row, and response columns past the longest kept
    response, are dropped; positions count real tokens only, so no log-prob changes.

    Args:
        rollout: B responses.
        rows: the rows to keep, in order.

    Returns:
        A rollout of ``len(rows)`` rows.
    """
    index = torch.as_tensor(list(rows), dtype=torch.long, device=rollout.response_ids.device)
    prompt_mask = rollout.prompt_mask[index]  # (b, P)
    first = int(prompt_mask.any(dim=0).long().argmax())  # first prompt column any kept row uses
    lengths = rollout.response_lengths[index]  # (b,)
    width = max(int(lengths.max()), 1) if len(rows) else 0
    return Rollout(
        prompt_ids=rollout.prompt_ids[index, first:],
        prompt_mask=prompt_mask[:, first:],
        response_ids=rollout.response_ids[index, :width],
        response_mask=rollout.response_mask[index, :width],
        logprobs=rollout.logprobs[index, :width],
        ended_with_eos=rollout.ended_with_eos[index],
        response_lengths=lengths,
        temperature=rollout.temperature,
    )


def completion_stats(rollout: Rollout) -> dict[str, Tensor]:
    """Length statistics of a rollout's completions, still on the device.

    Args:
        rollout: B sampled responses.

    Returns:
        ``completions/mean_length`` (tokens, EOS included), ``completions/max_length`` and
        ``completions/eos_fraction`` (the share that ended with EOS rather than at max_new_tokens).
    """
    lengths = rollout.response_lengths.float()  # (B,)
    return {
        "completions/mean_length": lengths.mean(),
        "completions/max_length": lengths.max(),
        "completions/eos_fraction": rollout.ended_with_eos.float().mean(),
    }


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module,
    prompts: list[TokenizedPrompt],
    tokenizer: PreTrainedTokenizerBase,
    rewarder: RewardComputer,
    hp: RLHyperparameters,
    *,
    seed: int,
) -> dict[str, float]:
    """Mean reward of one completion per evaluation prompt, sampled by the same seeded generator every time.

    Args:
        policy: the policy (sampled in eval mode).
        prompts: the evaluation prompts.
        tokenizer: the policy's tokenizer.
        rewarder: the job's reward.
        hp: sampling settings; prompts are sampled ``rollout_batch_size × num_generations`` at a time.
        seed: the job's seed.

    Returns:
        ``eval/reward/mean``, ``eval/reward/<grader>`` and ``eval/completions/mean_length``.
    """
    size = hp.completions_per_rollout
    generator = sampling_generator(seed, EVAL_ROLLOUT, next(policy.parameters()).device)
    rewards, lengths, per_grader = [], [], {}
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        rollout = sample_rollout(policy, [p.ids for p in chunk], tokenizer, hp, generator=generator)
        scores = rewarder.score([p.item for p in chunk], decode_completions(tokenizer, rollout), rollout)
        rewards.append(scores.rewards.float().cpu())
        lengths.append(rollout.response_lengths.float().cpu())
        for name, values in scores.per_grader.items():
            per_grader.setdefault(name, []).append(values)
    metrics = {f"eval/reward/{name}": torch.cat(v).mean().item() for name, v in per_grader.items()}
    return metrics | {
        "eval/reward/mean": torch.cat(rewards).mean().item(),
        "eval/completions/mean_length": torch.cat(lengths).mean().item(),
    }


def run_rollout_updates(
    loop: TrainingLoop,
    schedule: Sequence[Sequence[int]],
    step: Callable[[int, Sequence[int]], tuple[Tensor, Sequence[str]]],
    rollout_metrics: dict[str, float],
    evaluate: Callable[[], dict[str, float]] | None,
    metrics: dict[str, float],
) -> dict[str, float]:
    """A rollout's optimizer steps, one per minibatch of `schedule`, with the reports they fall due for.

    Each step backwards its loss (`step(step_number, minibatch)` returns the step's statistics and
    their names), then `loop.update` clips and applies it. Evaluation and checkpoints that fall due
    during the rollout wait for its last step, so a checkpoint never splits a rollout; metrics are
    reported when logging falls due or after an evaluation.

    Args:
        loop: the run's training loop.
        schedule: the minibatches (row indices of the rollout) of the steps to run, in order.
        step: backwards one step's loss.
        rollout_metrics: the rollout's own metrics, reported with every step's.
        evaluate: computes the evaluation metrics, or None without evaluation data.
        metrics: the last metrics reported, returned as they are when `schedule` is empty.

    Returns:
        The last step's metrics.
    """
    save = evaluate_now = False
    for i, minibatch in enumerate(schedule):
        number = loop.next_step()
        stats, names = step(number, minibatch)
        metrics = loop.update(stats, names) | rollout_metrics
        save, evaluate_now = save or loop.checkpoint_due(), evaluate_now or loop.eval_due()
        evaluated = evaluate is not None and evaluate_now and i == len(schedule) - 1
        if evaluated:
            metrics |= evaluate()
        if evaluated or loop.log_due():
            loop.callbacks.on_metrics(number, metrics)
    if save:
        loop.checkpoint(metrics)
    return metrics
