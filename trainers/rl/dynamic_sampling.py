"""DAPO's dynamic sampling and overlong reward shaping for GRPO (Yu et al. 2025, https://arxiv.org/abs/2503.14476).

**Dynamic sampling** (§3.2, eq. 11's constraint ``0 < |{o_i correct}| < G``): a group whose G
rewards are all equal has zero advantages, so it adds nothing to the policy gradient but dilutes
the step's normaliser. With ``dynamic_sampling`` each rollout is filled in rounds: a round samples
and grades `rollout_batch_size` prompts, its groups whose rewards are all equal are dropped
(`groups_with_signal`), and rounds go on until `rollout_batch_size` groups with differing rewards
are in (the first ones, in order; surplus groups are dropped too, as verl does) or
`max_sampling_rounds` rounds were sampled. The update then trains on the groups kept, fewer when
the bound was hit; none kept skips the rollout (a warning event), and `SKIPPED_ROLLOUTS_LIMIT`
skipped rollouts in a row fail the job as a user error, since the run could not progress (verl
raises at its bound at once). The filter reads the final reward (overlong penalty included: a
group whose rewards differ only by it does teach something), as verl's ``seq_final_reward``.

**The data order stays resumable.** Round k of the run (1-based, counting every round of every
rollout) samples stream batch k of `trainers.data.prompts.PromptOrder` (``rollout_indices(k)``,
the next `rollout_batch_size` prompts of the shuffled stream) with the completion seeds of batch k
(`trainers.rl.online.completion_seeds`); without dynamic sampling batch k is rollout k. So the
batches drawn (`DynamicSampler.batches_drawn`, saved in every checkpoint) say exactly where the
run stands, and the first round of the first rollout draws what a run without it draws. A stop
during a round drops the whole rollout, whose batches a resumed run draws again.

**Several processes.** Each round is `trainers.rl.shares.sample_and_score`: every rank ends with
the whole round's rewards, so every rank keeps the same groups and draws the same batches.

**Overlong shaping** (§3.4, eq. 13): `shaped_scores` adds `trainers.ops.reward_shaping.overlong_penalty`
to each completion's reward, before the filter and the advantages.
Shapes: B completions (prompts × G), P prompt tokens, A response tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from trainers.data.prompts import PromptOrder, TokenizedPrompt
from trainers.distributed.ranks import Ranks
from trainers.ops.reward_shaping import overlong_penalty
from trainers.rl.generation.base import GenerationBackend
from trainers.rl.learning_signal import LearningSignal
from trainers.rl.online import select_rows
from trainers.rl.rewards import RewardComputer, RewardScores
from trainers.rl.rollout import Rollout
from trainers.rl.shares import sample_and_score
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import GRPOHyperparameters
from trainers.spec.errors import UserError

OVERLONG_METRIC = "overlong_penalty"  # the penalty's name beside the graders': metric ``reward/overlong_penalty``
SKIPPED_ROLLOUTS_LIMIT = 5  # consecutive rollouts without a group with signal: the job fails


def groups_with_signal(rewards: Tensor, group_size: int) -> Tensor:
    """Which groups' rewards are not all equal (std > 0): the groups whose advantages are not all zero.

    Args:
        rewards: (B,) rewards, the G of each group consecutive.
        group_size: G.

    Returns:
        (B/G,) bool.
    """
    groups = rewards.reshape(-1, group_size)  # (B/G, G)
    return groups.amax(dim=1) > groups.amin(dim=1)  # (B/G,) exact: equal floats give no signal


def shaped_scores(scores: RewardScores, rollout: Rollout, hp: GRPOHyperparameters) -> RewardScores:
    """The scores with DAPO's overlong penalty added to every reward, when `hp.overlong_buffer` is set.

    The penalty (`overlong_penalty` with L_max = ``max_new_tokens``, L_cache = ``overlong_buffer``)
    is also kept beside the graders' scores as ``per_grader["overlong_penalty"]``, so it is
    reported as ``reward/overlong_penalty``.

    Args:
        scores: the completions' rewards (graders, reward models, missing-EOS penalty).
        rollout: the B completions (their lengths, EOS included).
        hp: supplies ``overlong_buffer``, ``overlong_penalty_factor`` and ``max_new_tokens``.

    Returns:
        New scores (the same object when shaping is off).
    """
    if hp.overlong_buffer is None:
        return scores
    penalty = overlong_penalty(rollout.response_lengths, max_length=hp.max_new_tokens, buffer=hp.overlong_buffer,
                               factor=hp.overlong_penalty_factor)  # (B,) fmt: skip
    rewards = scores.rewards + penalty.to(scores.rewards.device, scores.rewards.dtype)  # (B,)
    per_grader = scores.per_grader | {OVERLONG_METRIC: penalty.cpu()}
    return RewardScores(rewards=rewards, per_grader=per_grader, errors=scores.errors,
                        rows_with_errors=scores.rows_with_errors)  # fmt: skip


def concat_rollouts(parts: Sequence[Rollout], pad_token_id: int) -> Rollout:
    """Rollouts stacked row after row, prompts left-padded to the longest and responses right-padded.

    Args:
        parts: rollouts of the same temperature, on one device.
        pad_token_id: filler of the padding.

    Returns:
        One rollout of every part's rows, in order.
    """
    P = max(part.prompt_ids.shape[1] for part in parts)
    A = max(part.response_ids.shape[1] for part in parts)

    def widen(t: Tensor, width: int, value: float, left: bool) -> Tensor:
        pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
        return torch.nn.functional.pad(t, pad, value=value)

    return Rollout(
        prompt_ids=torch.cat([widen(p.prompt_ids, P, pad_token_id, True) for p in parts]),  # (B, P)
        prompt_mask=torch.cat([widen(p.prompt_mask, P, 0, True) for p in parts]),  # (B, P)
        response_ids=torch.cat([widen(p.response_ids, A, pad_token_id, False) for p in parts]),  # (B, A)
        response_mask=torch.cat([widen(p.response_mask, A, 0, False) for p in parts]),  # (B, A)
        logprobs=torch.cat([widen(p.logprobs, A, 0.0, False) for p in parts]),  # (B, A)
        ended_with_eos=torch.cat([p.ended_with_eos for p in parts]),  # (B,)
        response_lengths=torch.cat([p.response_lengths for p in parts]),  # (B,)
        temperature=parts[0].temperature,
    )


def select_scores(scores: RewardScores, rows: Sequence[int]) -> RewardScores:
    """The rewards and grader scores of some completions; grader errors are left out (see `DynamicSampler`)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    per_grader = {name: values[index] for name, values in scores.per_grader.items()}
    return RewardScores(rewards=scores.rewards[index.to(scores.rewards.device)], per_grader=per_grader, errors=[],
                        rows_with_errors=0)  # fmt: skip


def concat_scores(parts: Sequence[RewardScores]) -> RewardScores:
    """Scores of `concat_rollouts`' rows, in the same order."""
    names = parts[0].per_grader
    return RewardScores(
        rewards=torch.cat([p.rewards for p in parts]), per_grader={n: torch.cat([p.per_grader[n] for p in parts])
                                                                   for n in names},
        errors=[e for p in parts for e in p.errors], rows_with_errors=sum(p.rows_with_errors for p in parts),
    )  # fmt: skip


@dataclass
class FilledRollout:
    """What one dynamically sampled rollout gives the update.

    Attributes:
        rollout: the kept groups' completions (at most `rollout_batch_size` × G rows), or None when
            no group had signal (the rollout is skipped).
        scores: their scores; grader errors are not carried (each round's were observed and
            reported), ``reward/error_fraction`` is in `stats`.
        stats: ``sampling/rounds``, ``sampling/groups_dropped`` (groups whose rewards were all
            equal), ``sampling/frac_groups_kept`` (groups with signal over groups sampled, surplus
            ones included), ``sampling/groups_trained`` (at most R), ``sampling/rollouts_skipped``
            (skipped since the last rollout trained on), ``sampling/reward_mean`` (every completion
            sampled, before the filter: the policy's reward, which the kept groups' ``reward/mean``
            is not) and ``reward/error_fraction`` over every completion sampled.
    """

    rollout: Rollout | None
    scores: RewardScores | None
    stats: dict[str, float] = field(default_factory=dict)


class DynamicSampler:
    """The bookkeeping of dynamic sampling over a run: batches drawn, groups kept round after round.

    Per rollout: `start`, then while `next_batch` gives a batch number, sample and grade that
    stream batch and `add` it; `finish` then gives the rollout to train on and counts its rounds
    as drawn. `batches_drawn` (and the streak of skipped rollouts) is all a checkpoint needs
    (`state_dict`).

    Args:
        prompts_per_rollout: R, the groups a full rollout holds (``rollout_batch_size``).
        group_size: G.
        max_rounds: most rounds per rollout.
        pad_token_id: filler when kept groups of several rounds are stacked.
        batches_drawn: stream batches drawn by the rollouts before (0 for a fresh run).
    """

    def __init__(self, *, prompts_per_rollout: int, group_size: int, max_rounds: int, pad_token_id: int,
                 batches_drawn: int = 0):  # fmt: skip
        self.R, self.G, self.max_rounds, self.pad_token_id = prompts_per_rollout, group_size, max_rounds, pad_token_id
        self.batches_drawn = batches_drawn
        self.skipped = 0  # consecutive rollouts skipped, reported with the next one trained on
        self.start()

    def start(self) -> None:
        """Begin a rollout (a stopped one's rounds are forgotten: their batches are drawn again)."""
        self.rounds = self.groups_sampled = 0
        self.kept: list[tuple[Rollout, RewardScores]] = []
        self.kept_groups = self.signal_groups = self.rows_with_errors = 0
        self.reward_sum = 0.0

    def next_batch(self) -> int | None:
        """The stream batch the next round samples (1-based); None once the rollout is full or its rounds spent."""
        if self.kept_groups >= self.R or self.rounds >= self.max_rounds:
            return None
        return self.batches_drawn + self.rounds + 1

    def add(self, rollout: Rollout, scores: RewardScores) -> float:
        """Take one round: keep its groups with signal, up to the rollout's R.

        Args:
            rollout: the round's completions, every rank's (B = R × G rows).
            scores: their scores, overlong penalty included.

        Returns:
            The round's share of groups whose rewards are all equal (for `LearningSignal.observe`).
        """
        signal = groups_with_signal(scores.rewards, self.G)  # (B/G,)
        with_signal = signal.nonzero().squeeze(1).tolist()
        keep = with_signal[: self.R - self.kept_groups]
        rows = [k * self.G + g for k in keep for g in range(self.G)]
        if rows:
            self.kept.append((select_rows(rollout, rows), select_scores(scores, rows)))
        self.rounds += 1
        self.groups_sampled += len(signal)
        self.signal_groups += len(with_signal)
        self.kept_groups += len(keep)
        self.rows_with_errors += scores.rows_with_errors
        self.reward_sum += float(scores.rewards.float().sum())
        return 1.0 - len(with_signal) / len(signal)

    def finish(self, on_event: Callable[[str, str], None]) -> FilledRollout:
        """End the rollout: count its rounds as drawn and stack the kept groups.

        Args:
            on_event: receives a warning when the rollout is skipped.

        Returns:
            The rollout to train on (None in it when no group had signal).

        Raises:
            UserError: `SKIPPED_ROLLOUTS_LIMIT` consecutive rollouts were skipped.
        """
        self.batches_drawn += self.rounds
        completions = self.groups_sampled * self.G
        if not self.kept:
            self.skipped += 1
            what = f"{self.rounds} rounds of {self.R} prompts × {self.G} completions"
            if self.skipped >= SKIPPED_ROLLOUTS_LIMIT:
                raise UserError(
                    f"dynamic sampling found no group whose rewards differ in {self.skipped} consecutive rollouts "
                    f"({what} each; mean reward of the last {self.reward_sum / completions:.4g}), so nothing could "
                    "be trained on: the policy earns the same reward on every completion of a prompt (a task it "
                    "always solves or always fails); make the reward tell completions apart (partial credit, a "
                    "larger num_generations or temperature), raise max_sampling_rounds, or train fewer steps",
                    param="hyperparameters.dynamic_sampling",
                )  # fmt: skip
            on_event("warning", f"rollout skipped: every group got equal rewards in {what} (dynamic sampling)")
            return FilledRollout(None, None)
        rollout = concat_rollouts([part[0] for part in self.kept], self.pad_token_id)
        scores = concat_scores([part[1] for part in self.kept])
        stats = {
            "sampling/rounds": float(self.rounds),
            "sampling/groups_dropped": float(self.groups_sampled - self.signal_groups),
            "sampling/frac_groups_kept": self.signal_groups / self.groups_sampled,
            "sampling/groups_trained": float(self.kept_groups),
            "sampling/rollouts_skipped": float(self.skipped),
            "sampling/reward_mean": self.reward_sum / completions,
            "reward/error_fraction": self.rows_with_errors / completions,
        }
        self.skipped = 0
        return FilledRollout(rollout, scores, stats)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the stream batches drawn by the rollouts before, and the skipped streak."""
        return {"prompt_batches_drawn": self.batches_drawn, "rollouts_skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state_dict`."""
        self.batches_drawn = int(state["prompt_batches_drawn"])
        self.skipped = int(state.get("rollouts_skipped", 0))


def sample_with_signal(
    backend: GenerationBackend,
    prompts: Sequence[TokenizedPrompt],
    order: PromptOrder,
    tokenizer: PreTrainedTokenizerBase,
    rewarder: RewardComputer,
    hp: GRPOHyperparameters,
    *,
    sampler: DynamicSampler,
    signal: LearningSignal,
    seed: int,
    ranks: Ranks,
    callbacks: Callbacks,
    should_stop: Callable[[], bool],
) -> FilledRollout | None:
    """One dynamically sampled rollout: rounds of `sample_and_score` until R groups with signal are in.

    Round after round (`DynamicSampler.next_batch`): the stream batch's prompts
    (``order.rollout_indices(batch)``) sampled G times each from the batch's completion seeds and
    graded, each rank its share; their overlong penalty added (`shaped_scores`); the round observed
    by `signal` (a grader failing on every completion, rounds without signal) and its groups with
    signal kept (`DynamicSampler.add`).

    Args:
        backend: the run's rollout engine (every rank calls this together).
        prompts: the tokenised training prompts.
        order: the run's prompt order.
        tokenizer: the policy's tokenizer.
        rewarder: the job's reward.
        hp: the job's hyperparameters.
        sampler: the run's bookkeeping.
        signal: the run's `LearningSignal`.
        seed: the job's seed.
        ranks: the job's processes.
        callbacks: the run's callbacks (polled while grading; the skip warning).
        should_stop: the run's cooperative stop (`TrainingLoop.stop_requested`).

    Returns:
        The rollout to train on (`DynamicSampler.finish`), or None when a stop was requested while
        sampling or grading (on every rank alike; the rollout's rounds will be drawn again).

    Raises:
        UserError: what `LearningSignal.observe` and `DynamicSampler.finish` raise.
    """
    sampler.start()
    while (batch := sampler.next_batch()) is not None:
        rows = [prompts[i] for i in order.rollout_indices(batch)]
        sampled = sample_and_score(backend, rows, tokenizer, rewarder, hp, seed=seed, rollout_number=batch,
                                   group_size=hp.num_generations, ranks=ranks, callbacks=callbacks,
                                   should_stop=should_stop)  # fmt: skip
        if sampled is None:
            return None
        rollout, scores = sampled
        scores = shaped_scores(scores, rollout, hp)
        signal.observe(scores, sampler.add(rollout, scores))
    return sampler.finish(callbacks.on_event)
