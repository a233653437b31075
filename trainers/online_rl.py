"""Plumbing that PPO and GRPO share: seeded rollouts, the frozen reference, gradient-free passes, row slices.

- **Sampling is a function of (seed, rollout).** Rollout i draws its tokens from a generator seeded
  with `sampling_seed(seed, i)`, so a resumed run samples exactly what the uninterrupted run would
  have, with no generator state to carry in a checkpoint (the prompts are a function of the same
  pair, `trainers.prompt_data.PromptOrder`).
- **The reference policy** π_ref is the job's base model: for LoRA, the policy with its adapters
  disabled (no second copy of the weights); otherwise a frozen copy, taken before the first update
  (or loaded again from `base_model` when resuming, as the policy has moved).
- **Gradient-free passes** (old policy, reference) run in eval mode, in chunks of rows.

Shapes: B sequences, P prompt tokens, A response tokens.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.config import GRPOJob, PPOJob, RLHyperparameters
from trainers.modeling import load_policy
from trainers.rollout import Rollout, generate, response_logprobs

EVAL_ROLLOUT = 0  # the sampling stream of evaluations; training rollouts count from 1


def sampling_seed(seed: int, rollout: int) -> int:
    """Seed of the generator that samples rollout `rollout` of a job seeded with `seed`.

    ``(2·seed + 1)·2²⁰ + rollout``: distinct for every (seed, rollout < 2²⁰) pair, and never equal to
    a seed of `trainers.batching.BatchOrder` (``seed·2²⁰ + epoch``) of the same job.

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
    rows = list(range(rollout.response_ids.shape[0]))
    width = rollout.response_ids.shape[1]
    out = []
    with adapters_off:
        for start in range(0, len(rows), batch_size):
            chunk = select_rows(rollout, rows[start : start + batch_size])
            logp = response_logprobs(model, chunk, temperature)  # (b, a) a <= A
            out.append(torch.nn.functional.pad(logp, (0, width - logp.shape[1])))  # (b, A)
    model.train(was_training)
    return torch.cat(out)  # (B, A)


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
