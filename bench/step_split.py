"""Where a step of our GRPO or PPO goes: sampling, rewards, gradient-free passes, updates (``--split``).

`install` wraps, in the trainer's process, the functions each phase runs through, by the names the
trainer modules import them under (the same names before and after the generation backend, so a
checkout given with ``--also`` is split alike):

- sampling: `trainers.rl.rollout.generate` (prefill and decoding);
- rewards: the rest of `sample_and_score` (decoding the completions, the graders, the reward model);
- gradient-free: `frozen_logprobs` (π_old, π_ref) and PPO's `rollout_values` (V_old);
- updates: `accumulate_gradients` (forward and backward) and `TrainingLoop.update` (clipping, the
  optimizer step);
- other: the rest of the step (advantages, statistics, logging, the bench's own callback).

Times are exclusive (a phase called inside another is not counted twice) and wall-clock; they are
summed from `reset` (the end of the last warm-up step, where the rates start) and given in ms per
step (per rollout for PPO), so they add up to the step time the rates are taken over.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any

PHASES = ("sampling", "rewards", "gradient_free", "updates")


class PhaseClock:
    """Exclusive wall-clock time per phase since `reset`."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.stack: list[list[Any]] = []  # [phase, start, time spent in inner phases]
        self.since = time.perf_counter()

    def reset(self) -> None:
        """Start counting again (phases in progress count only from now)."""
        now = time.perf_counter()
        self.totals = dict.fromkeys(PHASES, 0.0)
        for frame in self.stack:
            frame[1], frame[2] = now, 0.0
        self.since = now

    def wrap(self, fn: Callable, phase: str) -> Callable:
        """`fn`, its calls timed as `phase`."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [phase, time.perf_counter(), 0.0]
            self.stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
                elapsed = time.perf_counter() - frame[1]
                self.totals[phase] += elapsed - frame[2]
                if self.stack:
                    self.stack[-1][2] += elapsed

        timed.__wrapped_phase__ = phase
        return timed

    def per_step(self, steps: int) -> dict[str, float]:
        """ms per step of each phase since `reset`, ``other`` the rest of the wall time, and ``step`` the whole."""
        wall = time.perf_counter() - self.since
        out = {phase: 1000 * t / steps for phase, t in self.totals.items()}
        out["other"] = 1000 * (wall - sum(self.totals.values())) / steps
        out["step"] = 1000 * wall / steps
        return out


def install(algo: str) -> PhaseClock:
    """Wrap the functions of each phase of our `algo` ("grpo", "rloo" or "ppo") trainer; return the clock."""
    import importlib

    import trainers.loop
    import trainers.rl.rollout

    trainer = importlib.import_module("trainers.ppo" if algo == "ppo" else "trainers.grpo")
    for name in ("trainers.rl.generation.hf", "trainers.rl.online", "trainers.rl.shares"):
        try:
            importlib.import_module(name)
        except ImportError:  # a checkout without the module
            pass
    clock = PhaseClock()
    generate = trainers.rl.rollout.generate
    timed_generate = clock.wrap(generate, "sampling")
    for name, module in list(sys.modules.items()):
        if name.startswith("trainers") and getattr(module, "generate", None) is generate:
            module.generate = timed_generate
    for name, phase in (("sample_and_score", "rewards"), ("frozen_logprobs", "gradient_free"),
                        ("rollout_values", "gradient_free"), ("accumulate_gradients", "updates")):  # fmt: skip
        if hasattr(trainer, name):
            setattr(trainer, name, clock.wrap(getattr(trainer, name), phase))
    trainers.loop.TrainingLoop.update = clock.wrap(trainers.loop.TrainingLoop.update, "updates")
    return clock
