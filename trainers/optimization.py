"""AdamW, its schedule and the run's length, for `trainers.loop.TrainingLoop` (and a second trained model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trainers.spec.config import LoopHyperparameters


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
        save: ``save(directory, weights)`` writes the model into a directory (e.g. ``save_pretrained``),
            from `weights` when they are given (its full state dict, gathered from a sharded run's
            ranks) or else from the model itself; the trainer loads it back itself when resuming.
    """

    name: str
    model: nn.Module
    learning_rate: float
    save: Callable[[Path, dict[str, torch.Tensor] | None], None]
    params: list[nn.Parameter] = field(init=False)

    def __post_init__(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]
