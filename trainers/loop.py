"""The optimisation plumbing every trainer shares, so that each algorithm's file holds only its loop.

A trainer sets up its run (`trainers.run_setup.prepare_run`), then builds a `TrainingLoop`, which
owns what does not depend on the algorithm: AdamW and the learning-rate schedule, resuming from a
checkpoint, the step counter, cooperative stopping, the update step with its non-finite guard, the
logging/evaluation/checkpoint cadence and the checkpoints themselves. A trainer's loop then reads::

    while loop.step < loop.total_steps:
        if loop.stop_requested():            # 1. polled once per step (or per RL rollout)
            return loop.stop(metrics)        #    saves progress since the last checkpoint
        step = loop.next_step()
        ...                                  # 2. forward and backward over the step's micro-batches
        metrics = loop.update(stats, names)  # 3. clip, refuse NaN/inf, optimizer and schedule step
        evaluated = has_eval and loop.eval_due()
        if evaluated:                        # 4. evaluate every `eval_every` steps and at checkpoints
            metrics |= evaluate(...)
        loop.log(metrics, evaluated=evaluated)  # 5. report every `log_every` steps and evaluated steps
        if loop.checkpoint_due():            # 6. save every `checkpoint_every` steps and at the end
            loop.checkpoint(metrics)
    return loop.finish(metrics)

An RL trainer runs several steps per rollout and evaluates and saves after its last step, when
any of them fell due (``loop.eval_due(since=first)``, ``loop.checkpoint_due(since=first)``).

A trainer with a second trained model (PPO's critic) passes it as an `AuxiliaryModel`: it gets
its own AdamW and schedule, goes through the same clipped, guarded update, and is saved beside
the model as ``<checkpoint>/<name>/``. Whatever else a trainer must carry across a resume (PPO's
KL coefficient) comes from its `extra_state` function. The auxiliary optimizer and the extra
state go to ``<checkpoint>/extra_state.pt``; `load_run_state` reads them back with the trainer state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grad_norm_
from transformers import PreTrainedTokenizerBase

from trainers.models.checkpoint import AlsoSaving, load_trainer_state, offer_checkpoint, restore_rng
from trainers.precision import ComputeSettings
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import JobSpec, LoopHyperparameters
from trainers.spec.errors import NumericalError, UserError
from trainers.spec.results import RunResult

LOSS_METRIC = "train/loss"  # the statistic `update` refuses to step on when it is not finite
EXTRA_STATE_FILE = "extra_state.pt"  # beside trainer_state.pt: the auxiliary optimizer and extra state


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
    params = list(params)
    # The fused kernel (one pass over all tensors; what transformers' Trainer uses by default) where
    # every parameter is a float tensor on a device that has it; the per-tensor loop elsewhere.
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, weight_decay=hp.weight_decay, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (hp.warmup_steps + 1))  # s counts steps from 0
    )
    return optimizer, scheduler


@dataclass
class AuxiliaryModel:
    """A second model trained beside the main one, with an AdamW and schedule of its own (PPO's critic).

    Its gradients come from the same backward pass as the main model's; `TrainingLoop.update`
    clips them to the same `max_grad_norm` on their own, refuses a non-finite norm, and steps
    both optimizers together. Warmup and weight decay are the job's.

    Attributes:
        name: its directory in a checkpoint (``<checkpoint>/<name>/``) and the group of its
            metrics (``<name>/grad_norm``, ``<name>/learning_rate``).
        model: the model; its parameters that require gradients are trained.
        learning_rate: its peak learning rate.
        save: writes the model into a directory (e.g. ``save_pretrained``); the trainer loads it
            back itself when resuming.
    """

    name: str
    model: nn.Module
    learning_rate: float
    save: Callable[[Path], None]
    params: list[nn.Parameter] = field(init=False)

    def __post_init__(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]


def load_run_state(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's trainer state, with what the trainer saved beside it, for `TrainingLoop`.

    Args:
        directory: a checkpoint directory.

    Returns:
        `load_trainer_state`'s dict, plus ``"auxiliary"`` (the auxiliary model's optimizer and
        schedule), ``"extra"`` (the trainer's `extra_state`) and ``"scaler"`` (the fp16 loss
        scaler's state), each None where the run had none, when the checkpoint has them.

    Raises:
        UserError: the directory is not a complete checkpoint.
    """
    state = load_trainer_state(directory)
    path = Path(directory) / EXTRA_STATE_FILE
    if path.is_file():
        state |= torch.load(path, map_location="cpu", weights_only=True)
    return state


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
        model_info: called at each checkpoint; what the checkpoint says about its model (`offer_checkpoint`).
        num_rows: training rows, recorded in the data position.
        steps_per_epoch: optimizer steps per pass over the training rows.
        state: `load_trainer_state` (or, with `auxiliary` or `extra_state`, `load_run_state`) of
            the checkpoint to resume from, or None for a fresh run.
        auxiliary: a second model to train beside `model` (PPO's critic), or None.
        extra_state: called at each checkpoint; what else the trainer needs to resume (a dict of tensors,
            numbers, strings, containers, for ``weights_only`` loading), in a resumed ``state["extra"]``.
        compute: the run's precision (fp16 scales the loss) and checkpoint type; None: fp32, as is.

    Attributes:
        step: optimizer steps done (including those before a resume).
        total_steps: the step the run ends at.
        optimizer: AdamW over the trainable parameters.
        scheduler: the warmup-then-constant schedule.
        auxiliary_optimizer: AdamW over the auxiliary model's trainable parameters, or None.
        auxiliary_scheduler: its schedule, or None.
        scaler: the fp16 loss scaler (disabled, a pass-through, in every other precision).

    Raises:
        UserError: resuming with an auxiliary model from a checkpoint that holds no state for it.
    """

    def __init__(
        self,
        job: JobSpec,
        callbacks: Callbacks,
        *,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        model_info: Callable[[], dict[str, Any]],
        num_rows: int,
        steps_per_epoch: int,
        state: dict[str, Any] | None = None,
        auxiliary: AuxiliaryModel | None = None,
        extra_state: Callable[[], dict[str, Any]] | None = None,
        compute: ComputeSettings | None = None,
    ):
        self.job = job
        self.hp: LoopHyperparameters = job.hyperparameters  # every job type's hyperparameters extend these
        self.callbacks = callbacks
        self.model = model
        self.tokenizer = tokenizer
        self.model_info = model_info
        self.num_rows = num_rows
        self.steps_per_epoch = steps_per_epoch
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(self.params, self.hp)
        self.auxiliary = auxiliary
        self.auxiliary_optimizer = self.auxiliary_scheduler = None
        if auxiliary is not None:
            hp = self.hp.model_copy(update={"learning_rate": auxiliary.learning_rate})
            self.auxiliary_optimizer, self.auxiliary_scheduler = build_optimizer(auxiliary.params, hp)
        self.extra_state, self.step = extra_state, 0
        self.compute = compute or ComputeSettings("fp32", "sdpa", False, torch.device("cpu"))
        self.scaler = self.compute.grad_scaler()
        if state is not None:
            self.step = state["step"]
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if auxiliary is not None:
                self._restore_auxiliary(state)
            if state.get("scaler"):  # an fp16 run's
                self.scaler.load_state_dict(state["scaler"])
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

    def backward(self, loss: Tensor) -> None:
        """Backward `loss` into the trained models' gradients, scaled first under fp16 (`update` unscales)."""
        self.scaler.scale(loss).backward()

    def update(self, stats: Tensor, names: Sequence[str]) -> dict[str, float]:
        """Apply the accumulated gradients: clip, refuse non-finite values, step, zero the gradients.

        The step's statistics and the gradient norm reach the host together, in the step's one
        synchronisation, and a non-finite loss or gradient norm stops the run before the
        optimizer can write NaNs into the weights. With an auxiliary model, its gradients are
        clipped on their own, a non-finite norm of theirs stops the run too, and both optimizers
        step (or neither does). Under fp16 the gradients are unscaled first; non-finite ones of a
        finite loss skip the step (with a warning) and halve the scale, until it is down to 1.

        Args:
            stats: (S,) the step's statistics (means over its examples), still on the device.
            names: S metric names for `stats`; must include ``"train/loss"``.

        Returns:
            The step's metrics: `names` mapped to `stats`, plus ``train/learning_rate`` (the rate
            this update used), ``train/grad_norm`` (before clipping) and ``train/epoch``; with an
            auxiliary model, ``<name>/learning_rate`` and ``<name>/grad_norm`` too; under fp16,
            ``train/loss_scale`` (a skipped step reports no gradient norms).

        Raises:
            NumericalError: the loss or a gradient norm is NaN or infinite; names the step.
        """
        trained = {"train": (self.params, self.optimizer, self.scheduler)}  # metric group → what it trains
        if self.auxiliary is not None:
            trained[self.auxiliary.name] = (self.auxiliary.params, self.auxiliary_optimizer, self.auxiliary_scheduler)
        for _, optimizer, _ in trained.values():
            self.scaler.unscale_(optimizer)  # a no-op unless fp16
        norms = [clip_grad_norm_(params, self.hp.max_grad_norm) for params, _, _ in trained.values()]
        norms = torch.stack(norms).float().to(stats.device)  # (G,) one norm per trained model, before clipping
        values = torch.cat([stats.detach().float(), norms]).tolist()  # the step's one synchronisation
        metrics = dict(zip(names, values[: len(names)], strict=True))
        checks = {"loss": metrics[LOSS_METRIC]}
        for (group, (_, _, scheduler)), norm in zip(trained.items(), values[len(names) :], strict=True):
            metrics |= {f"{group}/learning_rate": scheduler.get_last_lr()[0], f"{group}/grad_norm": norm}
            checks["gradient norm" if group == "train" else f"{group} gradient norm"] = norm
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        # fp16 only: non-finite gradients of a finite loss mean the loss scale overflowed them.
        skipped = scale > 1 and math.isfinite(checks["loss"]) and not all(map(math.isfinite, checks.values()))
        for what, value in checks.items():
            if not (math.isfinite(value) or skipped):
                norms_text = ", ".join(f"{g}/grad_norm={metrics[f'{g}/grad_norm']}" for g in trained)
                raise NumericalError(
                    f"non-finite {what} at step {self.step} (loss={checks['loss']}, {norms_text})", step=self.step
                )
        for _, optimizer, scheduler in trained.values():
            if not skipped:
                self.scaler.step(optimizer)  # optimizer.step() unless fp16
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        torch.clear_autocast_cache()  # autocast's low-precision copies of the weights are stale now
        if skipped:
            self.callbacks.on_event("warning", f"step {self.step} skipped: fp16 gradients overflow at scale {scale:g}")
            metrics = {k: v for k, v in metrics.items() if not k.endswith("/grad_norm")}
        if self.scaler.is_enabled():
            metrics["train/loss_scale"] = scale
        metrics["train/epoch"] = self.step / self.steps_per_epoch
        return metrics

    def checkpoint_due(self, since: int | None = None) -> bool:
        """Whether this step is saved (every `checkpoint_every` steps and the last), or with `since`, any after it."""
        steps = range(self.step if since is None else since + 1, self.step + 1)
        return any(s % self.hp.checkpoint_every == 0 or s == self.total_steps for s in steps)

    def eval_due(self, since: int | None = None) -> bool:
        """Whether this step is evaluated (every `eval_every` steps and at checkpoints), or any after `since`."""
        every = self.hp.eval_every
        steps = range(self.step if since is None else since + 1, self.step + 1)
        return any(every is not None and s % every == 0 for s in steps) or self.checkpoint_due(since)

    def log_due(self) -> bool:
        """Whether this step's metrics are reported: every `log_every` steps and at checkpoints."""
        return self.step % self.hp.log_every == 0 or self.checkpoint_due()

    def log(self, metrics: dict[str, float], *, evaluated: bool = False) -> None:
        """Report this step's `metrics` when logging falls due (`log_due`), or when they hold an evaluation."""
        if evaluated or self.log_due():
            self.callbacks.on_metrics(self.step, metrics)

    def checkpoint(self, metrics: dict[str, float]) -> None:
        """Offer a checkpoint of the current step to the callbacks (`offer_checkpoint`).

        With an auxiliary model or extra state, the `save` the callbacks get also writes
        ``<name>/`` and ``extra_state.pt`` (`load_run_state` reads them back).

        Args:
            metrics: the step's metrics, passed on with the checkpoint.
        """
        callbacks = self.callbacks
        if self.auxiliary is not None or self.extra_state is not None or self.scaler.is_enabled():
            callbacks = AlsoSaving(self.callbacks, self._save_extra)
        offer_checkpoint(
            callbacks, self.step, model=self.model, tokenizer=self.tokenizer, optimizer=self.optimizer,
            scheduler=self.scheduler, metrics=metrics,
            data_position={"steps_done": self.step, "num_rows": self.num_rows},
            job=self.job.model_dump(mode="json"), model_info=self.model_info(),
            dtype=self.compute.checkpoint_dtype,
        )  # fmt: skip
        self.saved_step = self.step

    def _save_extra(self, directory: Path) -> None:
        """Write the auxiliary model and ``extra_state.pt`` into a checkpoint directory."""
        auxiliary = None
        if self.auxiliary is not None:
            self.auxiliary.save(directory / self.auxiliary.name)
            auxiliary = {
                "optimizer": self.auxiliary_optimizer.state_dict(),
                "scheduler": self.auxiliary_scheduler.state_dict(),
            }
        extra = self.extra_state() if self.extra_state is not None else None
        scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        torch.save({"auxiliary": auxiliary, "extra": extra, "scaler": scaler}, directory / EXTRA_STATE_FILE)

    def _restore_auxiliary(self, state: dict[str, Any]) -> None:
        saved = state.get("auxiliary")
        if saved is None:
            raise UserError(
                f"the checkpoint holds no {self.auxiliary.name} state: it was not written by this kind of job",
                param="resume_from",
            )
        self.auxiliary_optimizer.load_state_dict(saved["optimizer"])
        self.auxiliary_scheduler.load_state_dict(saved["scheduler"])

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
