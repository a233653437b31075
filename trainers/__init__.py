"""Training library of rlhf-service: `run(job, data, callbacks)` trains and reports back.

Importing this package (and `config`, `callbacks`, `errors`) does not import torch; the training
stack is imported when `run` is called.
"""

from __future__ import annotations

from pathlib import Path

from trainers.spec.callbacks import Callbacks
from trainers.spec.config import (
    DPOHyperparameters,
    DPOJob,
    GRPOHyperparameters,
    GRPOJob,
    JobConfig,
    LoRAConfig,
    PPOHyperparameters,
    PPOJob,
    RewardModelHyperparameters,
    RewardModelJob,
)
from trainers.spec.errors import ModelNotFoundError, NumericalError, TrainerError, UserError
from trainers.spec.results import RunResult, TrainingData

__all__ = [
    "Callbacks",
    "DPOHyperparameters",
    "DPOJob",
    "GRPOHyperparameters",
    "GRPOJob",
    "JobConfig",
    "LoRAConfig",
    "PPOHyperparameters",
    "PPOJob",
    "RewardModelHyperparameters",
    "RewardModelJob",
    "ModelNotFoundError",
    "NumericalError",
    "RunResult",
    "TrainerError",
    "TrainingData",
    "UserError",
    "run",
]


def run(
    job: JobConfig,
    data: TrainingData,
    callbacks: Callbacks | None = None,
    *,
    resume_from: str | Path | None = None,
) -> RunResult:
    """Train `job` on `data`, reporting through `callbacks`.

    Args:
        job: the validated job spec; `job.type` picks the algorithm.
        data: canonical training (and optional evaluation) rows: preference rows for ``dpo`` and
            ``reward_model``, prompt rows for ``ppo`` and ``grpo``.
        callbacks: receives metrics, checkpoints and events, and is polled for cancellation;
            defaults to no-op callbacks.
        resume_from: a checkpoint directory written by a previous run's `save`; training
            continues from the step after it with the same optimizer, schedule, RNG and data order.

    Returns:
        The final status (``"completed"`` or ``"stopped"``), the step reached and its metrics.

    Raises:
        UserError: bad data or spec (ModelNotFoundError for a model that cannot be loaded).
        NumericalError: the loss or gradient became NaN or infinite.
    """
    callbacks = callbacks if callbacks is not None else Callbacks()
    match job.type:
        case "dpo":
            from trainers.dpo import train_dpo  # heavy: torch and transformers

            return train_dpo(job, data, callbacks, resume_from=resume_from)
        case "reward_model":
            from trainers.reward_model import train_reward_model

            return train_reward_model(job, data, callbacks, resume_from=resume_from)
        case "grpo":
            from trainers.grpo import train_grpo

            return train_grpo(job, data, callbacks, resume_from=resume_from)
        case "ppo":
            from trainers.ppo import train_ppo

            return train_ppo(job, data, callbacks, resume_from=resume_from)
        case _:
            raise UserError(f"unknown job type {job.type!r}", param="type")
