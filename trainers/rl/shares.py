"""A rollout over the job's processes (DPPO): each rank samples and grades its share of the prompts, then
every rank holds the whole rollout.

Each rank takes every N-th prompt of the rollout (`Ranks.batch_share`), with all G completions of
each (a GRPO group never splits over ranks), samples them from their own seeds
(`trainers.rl.online.completion_seeds`, so a rank draws exactly the tokens one process draws for
those rows) and grades them. The ranks then exchange their rows (`gather_rollout`): every rank ends
with the rollout and rewards one process would have, laid out as one process lays them out. What
follows is computed on the whole rollout (advantages, whitening, KL and reward statistics: global
by construction), and the gradient-bearing passes split every micro-batch over the ranks again.
On one process nothing is exchanged. Evaluation (`evaluate_policy`) shares its prompts the same way.
Shapes: B completions (prompts × G), P prompt tokens, A response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from trainers.data.prompts import TokenizedPrompt
from trainers.distributed.callbacks import RankCallbacks
from trainers.distributed.ranks import Ranks
from trainers.rl.generation.base import GenerationBackend
from trainers.rl.online import EVAL_ROLLOUT, completion_seeds, sample_rollout, score_rollout
from trainers.rl.rewards import RewardComputer, RewardScores, decode_completions
from trainers.rl.rollout import Rollout
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import RLHyperparameters


def local_stop_poll(callbacks: Callbacks) -> Callable[[], bool]:
    """The stop poll a rank makes without telling the others (rank 0's callbacks; one process: `should_stop`)."""
    return callbacks.local_stop if isinstance(callbacks, RankCallbacks) else callbacks.should_stop


def sample_and_score(
    backend: GenerationBackend,
    prompts: Sequence[TokenizedPrompt],
    tokenizer: PreTrainedTokenizerBase,
    rewarder: RewardComputer,
    hp: RLHyperparameters,
    *,
    seed: int,
    rollout_number: int,
    group_size: int,
    ranks: Ranks,
    callbacks: Callbacks,
    should_stop: Callable[[], bool],
) -> tuple[Rollout, RewardScores] | None:
    """Sample G completions of each of a rollout's prompts and grade them, this rank's share of the prompts.

    Completion g of the prompt at position p is row ``p·G + g`` and is sampled from
    `completion_seed` (seed, rollout_number, p, g). A rank with no prompt (fewer prompts than
    ranks) samples the first one as a stand-in, to run the same forwards, and contributes nothing.

    Args:
        backend: the run's rollout engine (every rank calls this together: its forwards are collectives).
        prompts: the rollout's prompts, the same list on every rank.
        tokenizer: the policy's tokenizer.
        rewarder: the job's reward.
        hp: sampling settings.
        seed: the job's seed.
        rollout_number: the rollout's number (`trainers.rl.online.rollout_prompts`).
        group_size: G, completions per prompt (PPO: 1).
        ranks: the job's processes.
        callbacks: the run's callbacks (`RankCallbacks` on several ranks): polled while grading.
        should_stop: the run's cooperative stop (`TrainingLoop.stop_requested`).

    Returns:
        The whole rollout (B = prompts × G rows) and its scores, on every rank; None when a stop
        was requested while sampling or grading (on every rank alike).
    """
    positions, weight = ranks.batch_share(range(len(prompts)))
    G = group_size
    rollout = sample_rollout(backend, [prompts[p].ids for p in positions for _ in range(G)], hp,
                             row_seeds=completion_seeds(seed, rollout_number, positions, G))  # fmt: skip
    items = [prompts[p].item for p in positions for _ in range(G)]
    scores = score_rollout(rewarder, tokenizer, items, rollout, should_stop=should_stop,
                           local_stop=local_stop_poll(callbacks), ranks=ranks)  # fmt: skip
    if scores is None or not ranks.distributed:
        return None if scores is None else (rollout, scores)
    rows = [p * G + g for p in positions for g in range(G)] if weight else []
    return gather_rollout(rollout, scores, rows, len(prompts) * G, tokenizer.pad_token_id, ranks)


def gather_rollout(
    rollout: Rollout, scores: RewardScores, rows: Sequence[int], total: int, pad_token_id: int, ranks: Ranks
) -> tuple[Rollout, RewardScores]:
    """Every rank's rows of a rollout and their scores, on every rank, in row order.

    Prompts are left-padded to the longest prompt of any rank and responses right-padded to the
    longest response, which is the layout one process sampling every row gives.

    Args:
        rollout: this rank's b rows.
        scores: their scores.
        rows: the rollout row of each of them (empty: this rank contributes nothing).
        total: B, the rollout's rows over all ranks.
        pad_token_id: filler of the padding.
        ranks: the job's processes (a collective).

    Returns:
        The rollout of B rows and its scores, on this rank's device.
    """
    device = rollout.response_ids.device
    mine = None
    if rows:
        mine = {
            "rows": list(rows), "errors": scores.errors, "rows_with_errors": scores.rows_with_errors,
            "per_grader": {name: v.cpu() for name, v in scores.per_grader.items()}, "rewards": scores.rewards.cpu(),
            **{name: getattr(rollout, name).cpu() for name in ("prompt_ids", "prompt_mask", "response_ids",
                                                                "response_mask", "logprobs", "ended_with_eos",
                                                                "response_lengths")},
        }  # fmt: skip
    parts: list[dict[str, Any]] = [part for part in ranks.gather(mine) if part is not None]
    P = max(part["prompt_ids"].shape[1] for part in parts)
    A = max(part["response_ids"].shape[1] for part in parts)
    out = {
        "prompt_ids": torch.full((total, P), pad_token_id, dtype=torch.long),  # (B, P)
        "prompt_mask": torch.zeros((total, P), dtype=torch.long),  # (B, P)
        "response_ids": torch.full((total, A), pad_token_id, dtype=torch.long),  # (B, A)
        "response_mask": torch.zeros((total, A), dtype=torch.long),  # (B, A)
        "logprobs": torch.zeros((total, A), dtype=torch.float32),  # (B, A)
        "ended_with_eos": torch.zeros(total, dtype=torch.bool),  # (B,)
        "response_lengths": torch.zeros(total, dtype=torch.long),  # (B,)
        "rewards": torch.zeros(total, dtype=parts[0]["rewards"].dtype),  # (B,)
    }
    per_grader = {name: torch.zeros(total, dtype=v.dtype) for name, v in parts[0]["per_grader"].items()}
    for part in parts:
        index = torch.tensor(part["rows"], dtype=torch.long)
        p, a = part["prompt_ids"].shape[1], part["response_ids"].shape[1]
        for name in ("prompt_ids", "prompt_mask"):  # right-aligned: the padding stays on the left
            out[name][index, P - p :] = part[name]
        for name in ("response_ids", "response_mask", "logprobs"):
            out[name][index, :a] = part[name]
        for name in ("ended_with_eos", "response_lengths", "rewards"):
            out[name][index] = part[name]
        for name, values in part["per_grader"].items():
            per_grader[name][index] = values
    out = {name: t.to(device) for name, t in out.items()}
    rewards = out.pop("rewards")
    gathered = Rollout(**out, temperature=rollout.temperature)
    return gathered, RewardScores(
        rewards=rewards, per_grader=per_grader, errors=[e for part in parts for e in part["errors"]],
        rows_with_errors=sum(part["rows_with_errors"] for part in parts),
    )  # fmt: skip


@torch.no_grad()
def evaluate_policy(
    backend: GenerationBackend,
    prompts: list[TokenizedPrompt],
    tokenizer: PreTrainedTokenizerBase,
    rewarder: RewardComputer,
    hp: RLHyperparameters,
    *,
    seed: int,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Mean reward of one completion per evaluation prompt, sampled from the same seeds every time.

    The prompt at position p is sampled with `completion_seed` (seed, `EVAL_ROLLOUT`, p, 0). On
    several ranks each samples and grades its share of every chunk, and the means are over every
    rank's completions.

    Args:
        backend: the run's rollout engine (the policy, sampled in eval mode, for ``hf``).
        prompts: the evaluation prompts.
        tokenizer: the policy's tokenizer.
        rewarder: the job's reward.
        hp: sampling settings; prompts are sampled ``rollout_batch_size × num_generations`` at a
            time per rank.
        seed: the job's seed.
        ranks: the job's processes; every rank calls this together (default: one).

    Returns:
        ``eval/reward/mean``, ``eval/reward/<grader>`` and ``eval/completions/mean_length``.
    """
    ranks = ranks or Ranks()
    size = hp.completions_per_rollout * ranks.world_size
    rewards, lengths, per_grader = [], [], {}
    for start in range(0, len(prompts), size):
        positions, weight = ranks.batch_share(range(start, min(start + size, len(prompts))))
        chunk = [prompts[p] for p in positions]
        rollout = sample_rollout(backend, [p.ids for p in chunk], hp,
                                 row_seeds=completion_seeds(seed, EVAL_ROLLOUT, positions, 1))  # fmt: skip
        if not weight:  # a rank without prompts in this chunk sampled a stand-in, to run the same forwards
            continue
        scores = rewarder.score([p.item for p in chunk], decode_completions(tokenizer, rollout), rollout)
        rewards.append(scores.rewards.float().cpu())
        lengths.append(rollout.response_lengths.float().cpu())
        for name, values in scores.per_grader.items():
            per_grader.setdefault(name, []).append(values)
    parts = ranks.gather((rewards, lengths, per_grader))  # every rank's completions (one process: its own)
    rewards, lengths, per_grader = [r for part in parts for r in part[0]], [n for part in parts for n in part[1]], {}
    for part in parts:
        for name, values in part[2].items():
            per_grader.setdefault(name, []).extend(values)
    metrics = {f"eval/reward/{name}": torch.cat(v).mean().item() for name, v in per_grader.items()}
    return metrics | {
        "eval/reward/mean": torch.cat(rewards).mean().item(),
        "eval/completions/mean_length": torch.cat(lengths).mean().item(),
    }
