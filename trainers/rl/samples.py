"""A few completions of a PPO/GRPO rollout as text, for `Callbacks.on_samples` (a dashboard's view of what
the policy writes and what it earned).

`report_samples` picks up to `count` rows of the rollout (`sample_positions`: with GRPO's groups, one
completion of each prompt before a second of any), decodes prompt and completion without special or
padding tokens (what graders read, `trainers.rl.rewards.decode_completions`), and reports them with
the reward the trainer optimised and any per-completion extras. It runs on every rank alike (each
holds the whole rollout); `RankCallbacks` passes rank 0's report on, the others' nowhere.
Shapes: B completions, P prompt tokens, A response tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from trainers.rl.rollout import Rollout
from trainers.spec.callbacks import Callbacks


def sample_positions(num_rows: int, count: int, group_size: int = 1) -> list[int]:
    """Which rows of a rollout to show: the first completion of each group, then the second of each, ...

    Args:
        num_rows: B, the rollout's rows, the G of each group consecutive.
        count: most rows to pick.
        group_size: G (PPO: 1, so the first `count` rows).

    Returns:
        Up to `count` distinct row indices: rows of different groups before two of one group.
    """
    groups = num_rows // group_size
    order = [g * group_size + i for i in range(group_size) for g in range(groups)]
    return order[: max(count, 0)]


def decode_masked(tokenizer: PreTrainedTokenizerBase, ids: Tensor, mask: Tensor) -> list[str]:
    """Each row's real tokens (`mask` 1) as text, special tokens left out.

    Args:
        tokenizer: the policy's tokenizer.
        ids: (b, T) token ids.
        mask: (b, T) 1 on the row's real tokens.

    Returns:
        b strings.
    """
    rows = [row[keep.bool()].tolist() for row, keep in zip(ids.cpu(), mask.cpu(), strict=True)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def sample_rows(
    tokenizer: PreTrainedTokenizerBase,
    rollout: Rollout,
    rewards: Tensor,
    *,
    count: int,
    group_size: int = 1,
    per_grader: Mapping[str, Tensor] | None = None,
    extras: Mapping[str, Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Up to `count` rows of a rollout as ``{"prompt", "completion", "reward", "reward/<grader>", **extras, "length"}``.

    Args:
        tokenizer: the policy's tokenizer.
        rollout: B completions and their prompts.
        rewards: (B,) the reward the trainer optimised for each completion.
        count: most rows (`sample_positions`).
        group_size: G, completions per prompt, consecutive (PPO: 1).
        per_grader: grader name → (B,) its own score (`RewardScores.per_grader`), shown as ``reward/<name>``.
        extras: name → (B,) a per-completion value to show beside the reward (a grader's score, an advantage).

    Returns:
        The rows; numbers are Python floats (None where not finite), ``length`` an int (tokens, EOS included).
    """
    positions = sample_positions(len(rewards), count, group_size)
    if not positions:
        return []
    index = torch.as_tensor(positions, dtype=torch.long)
    on_device = index.to(rollout.response_ids.device)
    prompts = decode_masked(tokenizer, rollout.prompt_ids[on_device], rollout.prompt_mask[on_device])
    completions = decode_masked(tokenizer, rollout.response_ids[on_device], rollout.response_mask[on_device])
    lengths = rollout.response_lengths[on_device].tolist()
    graders = {f"reward/{name}": values for name, values in (per_grader or {}).items()}
    columns = {"reward": rewards} | graders | dict(extras or {})
    values = {name: column.detach().float().cpu()[index].tolist() for name, column in columns.items()}
    return [
        {"prompt": prompt, "completion": completion,
         **{name: _finite(values[name][i]) for name in columns}, "length": int(lengths[i])}
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True))
    ]  # fmt: skip


def report_samples(
    callbacks: Callbacks,
    step: int,
    tokenizer: PreTrainedTokenizerBase,
    rollout: Rollout,
    rewards: Tensor,
    *,
    count: int,
    group_size: int = 1,
    per_grader: Mapping[str, Tensor] | None = None,
    extras: Mapping[str, Tensor] | None = None,
) -> None:
    """Report `sample_rows` of a rollout as optimizer step `step`'s samples (nothing when `count` is 0).

    Args:
        callbacks: the run's callbacks (`Callbacks.on_samples`).
        step: the rollout's last optimizer step.
        tokenizer, rollout, rewards, count, group_size, per_grader, extras: as `sample_rows`.
    """
    rows = sample_rows(tokenizer, rollout, rewards, count=count, group_size=group_size, per_grader=per_grader,
                       extras=extras)  # fmt: skip
    if rows:
        callbacks.on_samples(step, rows)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
