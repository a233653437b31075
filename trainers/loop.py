"""The optimisation plumbing every trainer shares, so that each algorithm's file holds only its loop.

A trainer seeds the run (`seed_everything`), builds its model and data, then hands them to a
`TrainingLoop`, which owns what does not depend on the algorithm: AdamW and the learning-rate
schedule, resuming from a checkpoint, the step counter, cooperative stopping, the update step with
its non-finite guard, the logging/evaluation/checkpoint cadence and the checkpoints themselves.
A trainer's loop then reads::

    while loop.step < loop.total_steps:
        if loop.stop_requested():            # polled once per step
            return loop.stop(metrics)        # saves progress since the last checkpoint
        step = loop.next_step()
        ...                                  # forward and backward over the step's micro-batches
        metrics = loop.update(stats, names)  # clip, refuse NaN/inf, optimizer and schedule step
        ...                                  # evaluate if loop.eval_due(); report if loop.log_due()
        if loop.checkpoint_due():
            loop.checkpoint(metrics)
    return loop.finish(metrics)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from trainers.callbacks import Callbacks
from trainers.checkpoint import offer_checkpoint, restore_rng
from trainers.config import DPOJob, LoopHyperparameters, RewardModelJob
from trainers.errors import NumericalError
from trainers.run_types import RunResult

LOSS_METRIC = "train/loss"  # the statistic `update` refuses to step on when it is not finite


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global generators (dropout, adapter initialisation).

    Call it before building anything random (e.g. LoRA adapters), so a run is a function of its
    seed; a resumed run then restores the checkpoint's RNG states instead (`TrainingLoop`).

    Args:
        seed: the job's seed.
    """
    random.seed(seed)
    torch.manual_seed(seed)


def total_steps(hp: LoopHyperparameters, steps_per_epoch: int) -> int:
    """Optimizer steps of a whole run: `max_steps` when set, else `n_epochs` passes over the data.

    Args:
        hp: the loop hyperparameters.
        steps_per_epoch: optimizer steps in one pass over the training rows.

    Returns:
        The step the run ends at if it is not stopped.
    """
    return hp.max_steps if hp.max_steps is not None else hp.n_epochs * steps_per_epoch


def build_optimizer(
    params: Sequence[nn.Parameter], hp: LoopHyperparameters
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its schedule: linear warmup over `warmup_steps` steps, then constant.

    ``lr(s) = learning_rate · min(1, (s + 1) / (warmup_steps + 1))`` for the update of step s + 1,
    so the first update already moves (the DPO paper's setup: 150 warmup steps, then constant).

    Args:
        params: the parameters to train (only those that require gradients).
        hp: supplies the learning rate, weight decay and warmup.

    Returns:
        The optimizer and the scheduler driving its learning rate.
    """
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (hp.warmup_steps + 1))  # s counts steps from 0
    )
    return optimizer, scheduler


class TrainingLoop:
    """Optimizer, schedule, step counter, cadence and checkpoints of one run (or resumed run).

    Constructing it builds AdamW over the model's trainable parameters, restores the optimizer,
    schedule, RNG and step from `state` when resuming (warning when the spec or the data size
    changed), and calls ``callbacks.on_start(total_steps)``.

    Args:
        job: the job spec (its `hyperparameters` drive the loop; the whole spec is saved with
            each checkpoint to detect a resume with a different one).
        callbacks: the run's callbacks.
        model: the model being trained (a peft model for LoRA; only its trainable parameters
            are optimised, clipped and, for adapters, saved).
        tokenizer: saved beside the model in every checkpoint.
        model_info: called at each checkpoint; what the checkpoint says about its model (e.g.
            ``{"kind": "causal_lm", "adapter": False, "base_model": ...}``), see `offer_checkpoint`.
        num_rows: training rows, recorded in the data position.
        steps_per_epoch: optimizer steps per pass over the training rows.
        state: `load_trainer_state` of the checkpoint to resume from, or None for a fresh run.

    Attributes:
        step: optimizer steps done (including those before a resume).
        total_steps: the step the run ends at.
        optimizer: AdamW over the trainable parameters.
        scheduler: the warmup-then-constant schedule.
    """

    def __init__(
        self,
        job: DPOJob | RewardModelJob,
        callbacks: Callbacks,
        *,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        model_info: Callable[[], dict[str, Any]],
        num_rows: int,
        steps_per_epoch: int,
        state: dict[str, Any] | None = None,
    ):
        self.job = job
        self.hp: LoopHyperparameters = job.hyperparameters
        self.callbacks = callbacks
        self.model = model
        self.tokenizer = tokenizer
        self.model_info = model_info
        self.num_rows = num_rows
        self.steps_per_epoch = steps_per_epoch
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(self.params, self.hp)
        self.step = 0
        if state is not None:
            self.step = state["step"]
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_rng(state["rng"])
            self._check_resume(state)
            callbacks.on_event("info", f"resumed from step {self.step}")
        self.saved_step = self.step  # the latest step a checkpoint exists for
        self.total_steps = total_steps(self.hp, steps_per_epoch)
        callbacks.on_start(self.total_steps)

    def stop_requested(self) -> bool:
        """Poll ``callbacks.should_stop()``; call once per step, before starting it."""
        return self.callbacks.should_stop()

    def stop(self, metrics: dict[str, float]) -> RunResult:
        """End a stopped run: checkpoint the progress since the last checkpoint, if any.

        Args:
            metrics: the latest step's metrics, kept with the checkpoint and returned.

        Returns:
            A ``"stopped"`` result at the current step.
        """
        if self.step > self.saved_step:
            self.checkpoint(metrics)
        self.callbacks.on_event("info", f"stopped at step {self.step}")
        return RunResult(status="stopped", step=self.step, metrics=metrics)

    def finish(self, metrics: dict[str, float]) -> RunResult:
        """End a run that reached `total_steps`.

        Args:
            metrics: the last step's metrics.

        Returns:
            A ``"completed"`` result.
        """
        self.callbacks.on_event("info", f"completed {self.step} steps")
        return RunResult(status="completed", step=self.step, metrics=metrics)

    def next_step(self) -> int:
        """Start the next optimizer step and return its number (1-based)."""
        self.step += 1
        return self.step

    def update(self, stats: Tensor, names: Sequence[str]) -> dict[str, float]:
        """Apply the accumulated gradients: clip, refuse non-finite values, step, zero the gradients.

        The step's statistics and the gradient norm reach the host together, in the step's one
        synchronisation, and a non-finite loss or gradient norm stops the run before the
        optimizer can write NaNs into the weights.

        Args:
            stats: (S,) the step's statistics (means over its examples), still on the device.
            names: S metric names for `stats`; must include ``"train/loss"``.

        Returns:
            The step's metrics: `names` mapped to `stats`, plus ``train/learning_rate`` (the rate
            this update used), ``train/grad_norm`` (before clipping) and ``train/epoch``.

        Raises:
            NumericalError: the loss or the gradient norm is NaN or infinite; names the step.
        """
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        values = torch.cat([stats.detach().float(), grad_norm.reshape(1).float().to(stats.device)]).tolist()
        metrics = dict(zip(names, values[:-1], strict=True))
        loss, norm = metrics[LOSS_METRIC], values[-1]
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            raise NumericalError(
                f"non-finite {what} at step {self.step} (loss={loss}, grad_norm={norm})", step=self.step
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics | {
            "train/learning_rate": learning_rate,
            "train/grad_norm": norm,
            "train/epoch": self.step / self.steps_per_epoch,
        }

    def checkpoint_due(self) -> bool:
        """Whether this step is saved: every `checkpoint_every` steps and at the last step."""
        return self.step % self.hp.checkpoint_every == 0 or self.step == self.total_steps

    def eval_due(self) -> bool:
        """Whether this step is evaluated: every `eval_every` steps (when set) and at checkpoints."""
        every = self.hp.eval_every
        return (every is not None and self.step % every == 0) or self.checkpoint_due()

    def log_due(self) -> bool:
        """Whether this step's metrics are reported: every `log_every` steps and at checkpoints.

        A step that was evaluated is reported too, whatever this says, so eval metrics arrive with
        the train metrics of their step.
        """
        return self.step % self.hp.log_every == 0 or self.checkpoint_due()

    def checkpoint(self, metrics: dict[str, float]) -> None:
        """Offer a checkpoint of the current step to the callbacks (`offer_checkpoint`).

        Args:
            metrics: the step's metrics, passed on with the checkpoint.
        """
        offer_checkpoint(
            self.callbacks, self.step, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
            scheduler=self.scheduler, metrics=metrics,
            data_position={"steps_done": self.step, "num_rows": self.num_rows},
            job=self.job.model_dump(mode="json"), model_info=self.model_info(),
        )  # fmt: skip
        self.saved_step = self.step

    def _check_resume(self, state: dict[str, Any]) -> None:
        """Warn when a resumed run differs from the checkpointed one in spec or data size."""
        if state["job"] != self.job.model_dump(mode="json"):
            self.callbacks.on_event("warning", "resuming with a job spec that differs from the checkpoint's")
        saw = state["data_position"].get("num_rows")
        if saw != self.num_rows:
            self.callbacks.on_event(
                "warning",
                f"resuming on {self.num_rows} training rows where the checkpoint saw {saw}: the data order differs",
            )
