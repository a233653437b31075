"""Runs that cannot learn, made visible: a grader that errs on every completion for several rollouts fails
the job as a user error, and rollouts in which every GRPO group got the same reward (zero advantages, zero
policy gradient) give a warning event, once per streak.
"""

from __future__ import annotations

from collections.abc import Callable

from trainers.rl.rewards import RewardScores
from trainers.spec.errors import UserError
from trainers.spec.rewards import MultiGrader, RewardSpec, leaf_graders


class LearningSignal:
    """Watches each rollout's rewards for a run that cannot learn: it fails one whose grader never works,
    and warns once per streak of rollouts that teach nothing.

    It reads the gathered rollout's scores and statistics, the same on every rank (the ranks' grader
    errors are concatenated, `trainers.rl.shares.gather_rollout`, so the counts are summed over ranks),
    so every rank raises at the same rollout; events go through the run's callbacks (rank 0's only).
    Streaks start afresh when a run resumes. With dynamic sampling each round of a rollout is observed
    (`trainers.rl.dynamic_sampling`), before its groups without signal are dropped.

    Args:
        spec: the job's reward spec, whose grader paths (``reward.graders[0]``) the failure names.
        on_event: receives the warning, ``(level, message)``.
    """

    ERROR_ROLLOUTS = 3  # consecutive rollouts in which a grader errs on every completion: the job fails
    ZERO_SIGNAL_ROLLOUTS = 5  # consecutive rollouts in which every group's rewards are equal: one warning

    def __init__(self, spec: RewardSpec, on_event: Callable[[str, str], None]):
        multi = isinstance(spec, MultiGrader)
        self.paths = {g.name: f"reward.graders[{i}]" if multi else "reward" for i, g in enumerate(leaf_graders(spec))}
        self.on_event = on_event
        self.error_streaks = dict.fromkeys(self.paths, 0)
        self.first_errors: dict[str, str] = {}
        self.zero_signal_streak = 0

    def observe(self, scores: RewardScores, frac_reward_zero_std: float | None = None) -> None:
        """Count one rollout.

        Args:
            scores: the whole rollout's scores (gathered over ranks).
            frac_reward_zero_std: GRPO's share of groups whose rewards are all equal; None (PPO): not watched.

        Raises:
            UserError: a grader erred on every completion of `ERROR_ROLLOUTS` consecutive rollouts;
                its param is the grader's path and its message quotes the grader's first error.
        """
        errors: dict[str, list[str]] = {}
        for error in scores.errors:  # "completion <i>: <grader>: <why>"; a grader name has no ':'
            _, name, why = error.split(": ", 2)
            errors.setdefault(name, []).append(why)
        for name, path in self.paths.items():
            if len(errors.get(name, ())) < len(scores.rewards):  # one error per grader and completion at most
                self.error_streaks[name] = 0
                self.first_errors.pop(name, None)
                continue
            self.error_streaks[name] += 1
            self.first_errors.setdefault(name, errors[name][0])
            if self.error_streaks[name] >= self.ERROR_ROLLOUTS:
                raise UserError(
                    f"{path}: grader {name!r} could not grade any completion in {self.ERROR_ROLLOUTS} consecutive "
                    f"rollouts; its first error: {self.first_errors[name]}", param=path,
                )  # fmt: skip
        if frac_reward_zero_std is None:
            return
        self.zero_signal_streak = self.zero_signal_streak + 1 if frac_reward_zero_std >= 1.0 else 0
        if self.zero_signal_streak == self.ZERO_SIGNAL_ROLLOUTS:
            self.on_event(
                "warning",
                f"no learning signal: every group got the same reward in {self.ZERO_SIGNAL_ROLLOUTS} consecutive "
                "rollouts (frac_reward_zero_std 1.0), so the advantages and the policy gradient are zero; make "
                "the reward tell completions apart (partial credit, a larger num_generations or temperature)",
            )
