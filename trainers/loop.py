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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grad_norm_
from transformers import PreTrainedTokenizerBase

from trainers.distributed.ranks import Ranks
from trainers.distributed.sharding import (
    full_model_state,
    is_parallel,
    load_optimizer_state,
    local_norm,
    optimizer_state,
    reshard,
)
from trainers.models.checkpoint import AlsoSaving, load_trainer_state, offer_checkpoint, restore_rng
from trainers.optimization import AuxiliaryModel, build_optimizer, total_steps
from trainers.precision import ComputeSettings
from trainers.spec.callbacks import Callbacks
from trainers.spec.config import JobSpec, LoopHyperparameters
from trainers.spec.errors import NumericalError, UserError
from trainers.spec.results import RunResult

LOSS_METRIC = "train/loss"  # the statistic `update` refuses to step on when it is not finite
EXTRA_STATE_FILE = "extra_state.pt"  # beside trainer_state.pt: the auxiliary optimizer and extra state


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
        ranks: the job's processes; with several, each rank passes its share of every step
            (`trainers.distributed.ranks`), statistics are summed over ranks, and checkpoints
            gather the full state to rank 0, which alone saves (through `RankCallbacks`).

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
        ranks: Ranks | None = None,
    ):
        self.job = job
        self.ranks = ranks or Ranks()
        self.hp: LoopHyperparameters = job.hyperparameters  # every job type's hyperparameters extend these
        self.callbacks = callbacks
        self.model = model
        self.tokenizer = tokenizer
        self.model_info = model_info
        self.num_rows = num_rows
        self.steps_per_epoch = steps_per_epoch
        if is_parallel(model):
            reshard(model)  # the optimizer steps the sharded parameters
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(self.params, self.hp)
        self.auxiliary = auxiliary
        self.auxiliary_optimizer = self.auxiliary_scheduler = None
        if auxiliary is not None:
            if is_parallel(auxiliary.model):
                reshard(auxiliary.model)
                auxiliary.params = [p for p in auxiliary.model.parameters() if p.requires_grad]
            hp = self.hp.model_copy(update={"learning_rate": auxiliary.learning_rate})
            self.auxiliary_optimizer, self.auxiliary_scheduler = build_optimizer(auxiliary.params, hp)
        self.extra_state, self.step = extra_state, 0
        self.compute = compute or ComputeSettings("fp32", "sdpa", False, torch.device("cpu"))
        self.scaler = self.compute.grad_scaler()
        if state is not None:
            self.step = state["step"]
            self._load_optimizer(model, self.optimizer, state, state["optimizer"])
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
        """Backward `loss` into the trained models' gradients, scaled first under fp16 (`update` unscales).

        On several ranks, `loss` is this rank's share of the step's loss (its rows' summed loss over
        the step's global count); it is multiplied by the world size, since gradient reduction
        averages over ranks (`Ranks.loss_scale`).
        """
        if self.ranks.distributed:
            loss = loss * self.ranks.loss_scale
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
            stats: (S,) the step's statistics (means over its examples), still on the device; on
                several ranks, this rank's share of each mean (its rows' sum over the step's global
                count), summed over ranks here.
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
        norms = [local_norm(clip_grad_norm_(params, self.hp.max_grad_norm)) for params, _, _ in trained.values()]
        norms = torch.stack(norms).float().to(stats.device)  # (G,) one norm per trained model, before clipping
        stats = self.ranks.sum(stats.detach().float())  # the global means (a no-op on one process)
        values = torch.cat([stats, norms]).tolist()  # the step's one synchronisation
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

    def log_due(self, since: int | None = None) -> bool:
        """Whether this step's metrics are reported (every `log_every` steps, at checkpoints), or any after `since`."""
        steps = range(self.step if since is None else since + 1, self.step + 1)
        return any(s % self.hp.log_every == 0 for s in steps) or self.checkpoint_due(since)

    def log(self, metrics: dict[str, float], *, evaluated: bool = False) -> None:
        """Report this step's `metrics` when logging falls due (`log_due`), or when they hold an evaluation."""
        if evaluated or self.log_due():
            self.callbacks.on_metrics(self.step, metrics)

    def checkpoint(self, metrics: dict[str, float]) -> None:
        """Offer a checkpoint of the current step to the callbacks (`offer_checkpoint`).

        With an auxiliary model or extra state, the `save` the callbacks get also writes
        ``<name>/`` and ``extra_state.pt`` (`load_run_state` reads them back). On several ranks
        every rank calls it: the full weights and optimizer state are gathered to rank 0 first,
        whose callbacks alone save.

        Args:
            metrics: the step's metrics, passed on with the checkpoint.
        """
        weights = full_model_state(self.model) if is_parallel(self.model) else None
        extra = self._gather_extra()
        callbacks = self.callbacks
        if extra is not None:
            callbacks = AlsoSaving(self.callbacks, lambda directory: self._save_extra(directory, extra))
        offer_checkpoint(
            callbacks, self.step, model=self.model, tokenizer=self.tokenizer,
            optimizer_state=optimizer_state(self.model, self.optimizer, self.ranks), scheduler=self.scheduler,
            metrics=metrics, data_position={"steps_done": self.step, "num_rows": self.num_rows},
            job=self.job.model_dump(mode="json"), model_info=self.model_info(),
            dtype=self.compute.checkpoint_dtype, weights=weights,
        )  # fmt: skip
        self.saved_step = self.step

    def _gather_extra(self) -> dict[str, Any] | None:
        """What ``extra_state.pt`` and the auxiliary model's directory hold, gathered on every rank (None: none)."""
        if self.auxiliary is None and self.extra_state is None and not self.scaler.is_enabled():
            return None
        auxiliary = None
        if self.auxiliary is not None:
            model = self.auxiliary.model
            auxiliary = {
                "weights": full_model_state(model) if is_parallel(model) else None,
                "optimizer": optimizer_state(model, self.auxiliary_optimizer, self.ranks),
                "scheduler": self.auxiliary_scheduler.state_dict(),
            }
        return {
            "auxiliary": auxiliary,
            "extra": self.extra_state() if self.extra_state is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def _save_extra(self, directory: Path, gathered: dict[str, Any]) -> None:
        """Write the auxiliary model and ``extra_state.pt`` (`_gather_extra`) into a checkpoint directory."""
        auxiliary = gathered["auxiliary"]
        if auxiliary is not None:
            self.auxiliary.save(directory / self.auxiliary.name, auxiliary.pop("weights"))
        torch.save(gathered, directory / EXTRA_STATE_FILE)

    def _load_optimizer(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], saved: dict[str, Any]
    ) -> None:
        """Restore an optimizer: by parameter name (any process count), or by position from a version-1 checkpoint."""
        if state.get("version", 2) >= 2:
            load_optimizer_state(model, optimizer, saved, self.ranks)
        else:
            optimizer.load_state_dict(saved)

    def _restore_auxiliary(self, state: dict[str, Any]) -> None:
        saved = state.get("auxiliary")
        if saved is None:
            raise UserError(
                f"the checkpoint holds no {self.auxiliary.name} state: it was not written by this kind of job",
                param="resume_from",
            )
        self._load_optimizer(self.auxiliary.model, self.auxiliary_optimizer, state, saved["optimizer"])
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
