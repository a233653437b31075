"""The channel from a running trainer back to whoever runs it (the worker, the CLI, a test).

Kept free of torch so the API and worker can import it without the training stack.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class Callbacks:
    """Hooks a trainer calls while it runs; every method is a no-op by default.

    Subclass and override what you need. The trainer calls the hooks from its own thread,
    synchronously, so a slow hook slows training.
    """

    def on_start(self, total_steps: int) -> None:
        """Called once, before the first step of a run (or of a resumed run).

        Args:
            total_steps: optimizer steps the run will reach if it is not stopped.
        """

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Receive the metrics of optimizer step `step` (1-based), keys named `group/name`.

        Args:
            step: the optimizer step the metrics belong to.
            metrics: metric name to value, e.g. ``{"train/loss": 0.69, "rewards/accuracies": 0.5}``.
        """

    def on_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Receive a few completions of the PPO/GRPO rollout that optimizer step `step` ended.

        Called after a rollout's updates when one of its steps was logged (every `log_every` steps),
        with up to `log_samples` rows; GRPO takes them from different prompts first. A resumed run
        may report a step again (replace what it reported before).

        Args:
            step: the rollout's last optimizer step.
            rows: ``{"prompt": str, "completion": str, "reward": float}`` each (the text without
                special or padding tokens; the reward the trainer optimised for that completion),
                plus ``"length"`` (completion tokens, EOS included) and the trainer's extras:
                ``"reward/<grader>"`` (each grader's or reward model's own score), GRPO's
                ``"advantage"`` (estimators with one advantage per completion), PPO's ``"kl"``
                (the completion's summed k1 KL to the reference, nats); every value a string or
                a number (None where not finite).
        """

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict[str, Any]) -> None:
        """Offer a checkpoint at optimizer step `step`; call `save(directory)` to write it.

        `save(directory)` writes into an existing, empty `directory`:
        ``directory/model/`` (Hugging Face ``save_pretrained`` of model and tokenizer) and
        ``directory/trainer_state.pt`` (optimizer, scheduler, step, RNG states, data position),
        which is what ``trainers.run(..., resume_from=directory)`` needs.

        Args:
            step: the optimizer step the checkpoint captures.
            save: writes the checkpoint into the given directory.
            info: ``{"metrics": {...latest metrics...}, "probe": {"text": str, "logits": [float, ...]}}``;
                the probe holds the in-memory model's logits (eval mode, float32) at the last
                position of the tokenised probe text, first 32 vocabulary entries, so a reader
                can check that a reloaded checkpoint is the same model; ``info["model"]`` says
                what the checkpoint holds (``{"kind": "causal_lm" | "reward_model", "adapter": bool,
                "base_model": str}``, reward models also ``reward_mean`` and ``reward_std``), the
                same dictionary `save` writes to ``model/rlhf_service.json``.
        """

    def should_stop(self) -> bool:
        """Return True to stop cooperatively; polled once per optimizer step (PPO and GRPO also
        after sampling a rollout and, at most every `trainers.spec.graders.STOP_POLL_S`, while grading it).

        Returns:
            Whether the trainer should save a checkpoint and return with status ``"stopped"``.
        """
        return False

    def on_event(self, level: str, message: str) -> None:
        """Receive a human-readable event.

        Args:
            level: one of ``"info"``, ``"warning"``, ``"error"``.
            message: the event, in one sentence.
        """
