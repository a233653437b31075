"""Plumbing that PPO and GRPO share: seeded rollouts, their rewards, gradient-free passes, row slices.

- **Sampling is a function of (seed, rollout, prompt, completion).** Completion g of the prompt at
  position p of rollout i draws its tokens from uniforms seeded with `completion_seed(seed, i, p, g)`
  (`trainers.rl.rollout.row_uniforms`), so a resumed run samples exactly what the uninterrupted run
  would have, with no generator state to carry in a checkpoint (the prompts are a function of
  (seed, rollout), `trainers.data.prompts.PromptOrder`), and a rank that samples some of a
  rollout's prompts draws exactly what one process draws for them. PPO's minibatch order comes
  from `sampling_generator` (seed, rollout), the same on every rank.
- **The reference policy** π_ref is the job's base model (`trainers.run_setup.reference_policy`):
  for LoRA, the policy with its adapters disabled (`frozen_logprobs` with ``reference=True``).
- **Gradient-free passes** (old policy, reference) run in eval mode, in groups of rows that pad
  little (`forward_groups`).

Shapes: B sequences, P prompt tokens, A response tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.data.batching import bucket_overhead_tokens, length_buckets
from trainers.data.prompts import PromptOrder, TokenizedPrompt
from trainers.distributed.ranks import Ranks
from trainers.precision import ComputeSettings
from trainers.rl.generation.base import GenerationBackend
from trainers.rl.response_logprobs import response_logprobs
from trainers.rl.rewards import RewardComputer, RewardScores, decode_completions
from trainers.rl.rollout import Rollout
from trainers.spec.config import RLHyperparameters

EVAL_ROLLOUT = 0  # the sampling stream of evaluations; training rollouts count from 1


def sampling_seed(seed: int, rollout: int) -> int:
    """Seed of the generator that draws rollout `rollout`'s minibatch order in a job seeded with `seed`.

    ``(2·seed + 1)·2²⁰ + rollout``: distinct for every (seed, rollout < 2²⁰) pair, and never equal to
    a seed of `trainers.data.batching.BatchOrder` (``seed·2²⁰ + epoch``) of the same job.

    Args:
        seed: the job's seed.
        rollout: the rollout number (1-based; `EVAL_ROLLOUT` for evaluation).

    Returns:
        A non-negative integer below 2⁶⁴.
    """
    return (2 * seed + 1) * 2**20 + rollout


def completion_seed(seed: int, rollout: int, position: int, index: int) -> int:
    """Seed of the uniforms that sample completion `index` of the prompt at `position` of a rollout.

    A hash of the four numbers (BLAKE2b, 8 bytes): distinct pairs of completions get unrelated
    streams, whatever the batch or the rank that samples them.

    Args:
        seed: the job's seed.
        rollout: the rollout number (1-based; `EVAL_ROLLOUT` for evaluation).
        position: the prompt's position in the rollout (or in the evaluation split).
        index: the completion's index in its prompt's group (0 to G − 1; PPO: 0).

    Returns:
        A non-negative integer below 2⁶⁴.
    """
    digest = hashlib.blake2b(f"{seed}/{rollout}/{position}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def completion_seeds(seed: int, rollout: int, positions: Sequence[int], group_size: int) -> list[int]:
    """`completion_seed` of every completion of the prompts at `positions`, G consecutive per prompt."""
    return [completion_seed(seed, rollout, p, g) for p in positions for g in range(group_size)]


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
    """The generator of rollout `rollout` of a job seeded with `seed` (PPO's minibatch order).

    Args:
        seed: the job's seed.
        rollout: the rollout number (1-based; `EVAL_ROLLOUT` for evaluation).
        device: the policy's device, where sampling draws.

    Returns:
        A fresh generator seeded with `sampling_seed`.
    """
    return torch.Generator(device=device).manual_seed(sampling_seed(seed, rollout))


def rollout_prompts(
    order: PromptOrder,
    prompts: Sequence[TokenizedPrompt],
    *,
    step: int,
    steps_per_rollout: int,
) -> tuple[int, list[TokenizedPrompt]]:
    """The number and the prompts of the rollout that starts after `step`.

    The rollout's number is the rollouts done, rounded up, plus one; its prompts are
    ``order.rollout_indices(number)``, and its completions are seeded by `completion_seeds` of
    that number, so a resumed run samples what the uninterrupted run would have.

    Args:
        order: the run's prompt order.
        prompts: the tokenised training prompts.
        step: optimizer steps done.
        steps_per_rollout: optimizer steps each rollout feeds.

    Returns:
        The rollout's number and its prompts.
    """
    number = -(-step // steps_per_rollout) + 1
    return number, [prompts[i] for i in order.rollout_indices(number)]


def sample_rollout(
    backend: GenerationBackend, prompt_ids: Sequence[Sequence[int]], hp: RLHyperparameters, *, row_seeds: Sequence[int]
) -> Rollout:
    """Sample one completion per prompt through the run's generation backend, with the job's sampling settings.

    Args:
        backend: the run's rollout engine (`trainers.rl.generation`); every rank calls this together.
        prompt_ids: B prompts as token ids (GRPO repeats each prompt G times).
        hp: supplies `max_new_tokens`, `temperature` and `top_p`.
        row_seeds: each completion's seed (`completion_seeds`), its only source of randomness.

    Returns:
        The rollout, on the policy's device.
    """
    return backend.sample(prompt_ids, row_seeds=row_seeds, max_new_tokens=hp.max_new_tokens,
                          temperature=hp.temperature, top_p=hp.top_p)  # fmt: skip


def reuses_sampling_logprobs(backend: GenerationBackend, compute: ComputeSettings) -> bool:
    """Whether the sampling pass's log-probs can stand for log π_old (as TRL's PPO takes them).

    They can when the training model sampled the rollout itself (the ``hf`` backend) in float32:
    sampling and the π_old pass both run in eval mode at the rollout's temperature, and the cached
    and full passes then agree to about 1e-6 (`trainers.rl.rollout`, "One temperature for every
    pass"), which saves one gradient-free forward pass over the rollout. In bf16 or fp16 they
    differ by rounding (about 3e-3 on builtin:tiny-llama), and another engine's log-probs are not
    the trainer's: π_old is then recomputed (`frozen_logprobs`).
    """
    return backend.samples_training_model and compute.precision == "fp32"


def score_rollout(
    rewarder: RewardComputer,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[dict],
    rollout: Rollout,
    *,
    should_stop: Callable[[], bool],
    local_stop: Callable[[], bool] | None = None,
    ranks: Ranks | None = None,
) -> RewardScores | None:
    """The rewards of a rollout's completions, or None when a stop is requested before they are all in.

    `should_stop` is polled before grading (a stop during sampling), `local_stop` between
    completions while grading, and after it: a stopped rollout has not been trained on, so dropping
    it splits nothing. On several ranks each grades its own completions, polling rank 0's callbacks
    without the others (`RankCallbacks.local_stop`), and all then take rank 0's verdict: every rank
    stops, or none does.

    Args:
        rewarder: the job's reward.
        tokenizer: the policy's tokenizer, to decode the completions.
        items: each completion's dataset row (its prompt row).
        rollout: B sampled completions.
        should_stop: the run's cooperative stop (`TrainingLoop.stop_requested`; a collective on
            several ranks).
        local_stop: the poll while grading, which tells no other rank (default: `should_stop`).
        ranks: the job's processes (default: one).

    Returns:
        The scores, or None when a stop was requested.
    """
    local_stop = local_stop or should_stop
    if should_stop():
        return None
    scores = rewarder.score(items, decode_completions(tokenizer, rollout), rollout, should_stop=local_stop)
    if (ranks or Ranks()).broadcast(scores is None or local_stop()):
        return None
    return scores


@torch.no_grad()
def frozen_logprobs(
    model: nn.Module,
    rollout: Rollout,
    temperature: float,
    *,
    batch_size: int,
    reference: bool = False,
    ranks: Ranks | None = None,
) -> Tensor:
    """`response_logprobs` without gradients, in eval mode, `batch_size` rows at a time.

    Args:
        model: the policy (old log-probs) or the reference model.
        rollout: B sampled responses.
        temperature: τ of the rollout.
        batch_size: rows per forward.
        reference: run a peft model with its adapters disabled, as π_ref.
        ranks: the job's processes, which share the passes (`map_forward_groups`; default: one).

    Returns:
        (B, A) float32 log-probs, 0 on padding.
    """
    was_training = model.training
    model.eval()
    adapters_off = model.disable_adapter() if reference and isinstance(model, PeftModel) else contextlib.nullcontext()
    with adapters_off:
        out = map_forward_groups(lambda part: response_logprobs(model, part, temperature), rollout, batch_size, ranks)
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


def map_forward_groups(
    fn: Callable[[Rollout], Tensor], rollout: Rollout, batch_size: int, ranks: Ranks | None = None
) -> Tensor:
    """A per-row pass over every row of a rollout, in `forward_groups` of at most `batch_size` rows.

    On several ranks (each holding the whole rollout) the groups are `batch_size` rows per rank;
    each rank runs its share of every group (`Ranks.batch_share`: the same number of passes on
    every rank, as a parallel model needs) and the values are summed over ranks.

    Args:
        fn: maps a rollout of b rows (its response columns trimmed to its longest) to (b, a) values.
        rollout: B sampled responses.
        batch_size: the most rows per pass.
        ranks: the job's processes (default: one).

    Returns:
        (B, A) the values in row order, 0 past each pass's width, on every rank.
    """
    ranks = ranks or Ranks()
    B, A = rollout.response_ids.shape
    out = None
    for group in forward_groups(rollout, range(B), batch_size * ranks.world_size):
        rows, weight = ranks.batch_share(group)
        values = fn(select_rows(rollout, rows))  # (b, a) a <= A
        if out is None:
            out = values.new_zeros((B, A))
        if weight:
            out[torch.as_tensor(rows, device=values.device), : values.shape[1]] = values
    return ranks.sum(out)  # (B, A)


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
