"""A run's observed pace: steps and tokens per second, and the time left, from the steps it reported.

Pure bookkeeping over (monotonic time, step, cumulative tokens) observations; the reporter feeds it
each step's metrics as they arrive (`worker.reporting.JobReporter`) and a resumed run, a new
process, starts a new one.

- **Warm-up.** The first step a run reports is where the measurement starts: nothing before it
  counts (loading the model and data, the first step's allocations, kernel compilation and, for
  PPO/GRPO, the first rollout's lazy set-up). Those costs sit in the first step whatever the run's
  length, so skipping one step removes them, where skipping the first ~10% of the steps would hide
  the estimate of a long run for hours to gain nothing on a short one. A step reported again
  (a step number not above the last one) starts the measurement over.
- **Smoothing.** The rate is an exponentially weighted one: sums of the steps and of the seconds
  between observations, both decayed by ``exp(−Δt/τ)`` at each observation, give
  ``steps/second = Σ w·Δsteps / Σ w·Δt``, with τ = `TIME_CONSTANT_S` seconds. A constant pace is
  measured exactly; a change of pace shows within about τ; and intervals weigh by their duration,
  so PPO's long rollout step followed by quick update steps averages to the true rate instead of
  swinging with each step (a plain per-step average would over-weight the quick ones). Evaluations
  and checkpoints happen between observations too, so the estimate includes their time, as the
  run's end will.
- **Tokens** per second are the same ratio over the increments of the cumulative
  ``train/num_tokens`` metric (every trainer reports it), over the intervals where both ends have it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TIME_CONSTANT_S = 120.0  # τ: how far back, in seconds, the rate looks (weights e^(−age/τ))


@dataclass(frozen=True)
class PaceEstimate:
    """What the pace says at one moment.

    Attributes:
        steps_per_second: the smoothed step rate.
        tokens_per_second: the smoothed token rate, or None when the run reports no token count.
        seconds_left: until the last step at that rate, from the moment asked (≥ 0), or None when
            the total is unknown.
    """

    steps_per_second: float
    tokens_per_second: float | None
    seconds_left: float | None


class Pace:
    """The pace of one run, from its observations (see the module docstring).

    Args:
        time_constant: τ in seconds.
    """

    def __init__(self, time_constant: float = TIME_CONSTANT_S) -> None:
        self.time_constant = time_constant
        self.reset()

    def reset(self) -> None:
        """Forget every observation: the next one is a new start."""
        self.last: tuple[float, int, float | None] | None = None  # (time, step, tokens) of the latest observation
        self.seconds = self.steps = 0.0  # decayed sums over the intervals since the start
        self.token_seconds = self.tokens = 0.0  # the same over the intervals with a token count at both ends

    def observe(self, now: float, step: int, tokens: float | None = None) -> None:
        """Record that `step` was reported at monotonic time `now` (seconds), with `tokens` trained so far.

        Args:
            now: a monotonic clock's reading.
            step: the step reported.
            tokens: the cumulative ``train/num_tokens`` at that step, or None.
        """
        if self.last is None or step <= self.last[1]:
            self.reset()
            self.last = (now, step, tokens)
            return
        then, previous_step, previous_tokens = self.last
        elapsed = max(now - then, 0.0)
        decay = math.exp(-elapsed / self.time_constant)
        self.seconds = self.seconds * decay + elapsed
        self.steps = self.steps * decay + (step - previous_step)
        self.token_seconds, self.tokens = self.token_seconds * decay, self.tokens * decay
        if tokens is not None and previous_tokens is not None:
            self.token_seconds += elapsed
            self.tokens += tokens - previous_tokens
        self.last = (now, step, tokens)

    def estimate(self, now: float, total_steps: int | None) -> PaceEstimate | None:
        """The pace at monotonic time `now`, or None before two observations (or with no time between them).

        Args:
            now: a monotonic clock's reading, at or after the last observation.
            total_steps: the step the run ends at, or None when unknown.

        Returns:
            The rates, and ``(total_steps − last step) / steps_per_second`` less the time since
            the last observation (not below 0).
        """
        if self.last is None or self.seconds <= 0 or self.steps <= 0:
            return None
        rate = self.steps / self.seconds
        tokens = self.tokens / self.token_seconds if self.token_seconds > 0 else None
        left = None
        if total_steps is not None:
            then, step, _ = self.last
            left = max(max(total_steps - step, 0) / rate - (now - then), 0.0)
        return PaceEstimate(steps_per_second=rate, tokens_per_second=tokens, seconds_left=left)
