"""Training library of rlhf-service: `run(job, data, callbacks)` trains and reports back.

Importing this package (or any module of `trainers.spec`) does not import torch; the training
stack is imported when `run` is called.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from trainers.spec.callbacks import Callbacks
from trainers.spec.config import (
    DPOHyperparameters,
    DPOJob,
    GRPOHyperparameters,
    GRPOJob,
    JobConfig,
    KTOHyperparameters,
    KTOJob,
    LoRAConfig,
    ORPOHyperparameters,
    ORPOJob,
    PPOHyperparameters,
    PPOJob,
    RewardModelHyperparameters,
    RewardModelJob,
    SFTHyperparameters,
    SFTJob,
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
    "KTOHyperparameters",
    "KTOJob",
    "LoRAConfig",
    "ORPOHyperparameters",
    "ORPOJob",
    "PPOHyperparameters",
    "PPOJob",
    "RewardModelHyperparameters",
    "RewardModelJob",
    "SFTHyperparameters",
    "SFTJob",
    "ModelNotFoundError",
    "NumericalError",
    "RunResult",
    "TrainerError",
    "TrainingData",
    "UserError",
    "run",
]

# The training function of each job type of `JobConfig`, as (module, function): imported when run.
TRAINERS: dict[str, tuple[str, str]] = {
    "dpo": ("trainers.dpo", "train_dpo"),
    "orpo": ("trainers.dpo", "train_orpo"),  # the DPO loop with its loss fixed to orpo
    "reward_model": ("trainers.reward_model", "train_reward_model"),
    "grpo": ("trainers.grpo", "train_grpo"),
    "ppo": ("trainers.ppo", "train_ppo"),
    "sft": ("trainers.sft", "train_sft"),
    "kto": ("trainers.kto", "train_kto"),
}


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
        data: canonical training (and optional evaluation) rows: preference rows for ``dpo``, ``orpo`` and
            ``reward_model``, prompt rows for ``ppo`` and ``grpo``, chat rows for ``sft``, feedback (or
            preference) rows for ``kto``.
        callbacks: receives metrics, checkpoints and events, and is polled for cancellation;
            defaults to no-op callbacks. Under torchrun (several processes) only rank 0's are
            called, and its answer to the stop poll is every rank's.
        resume_from: a checkpoint directory written by a previous run's `save`; training
            continues from the step after it with the same optimizer, schedule, RNG and data order.

    Returns:
        The final status (``"completed"`` or ``"stopped"``), the step reached and its metrics.

    Raises:
        UserError: bad data or spec (ModelNotFoundError for a model that cannot be loaded).
        NumericalError: the loss or gradient became NaN or infinite.
    """
    callbacks = callbacks if callbacks is not None else Callbacks()
    if job.type not in TRAINERS:
        raise UserError(f"unknown job type {job.type!r}", param="type")
    module, function = TRAINERS[job.type]
    train = getattr(importlib.import_module(module), function)  # heavy: torch and transformers
    from trainers.distributed.callbacks import RankCallbacks
    from trainers.distributed.ranks import init_ranks

    ranks = init_ranks()  # under torchrun: join the job's other processes, and report from rank 0 only
    if ranks.distributed:
        callbacks = RankCallbacks(callbacks, ranks)
    result = train(job, data, callbacks, resume_from=resume_from)
    # Every rank waits for rank 0 to have saved the last checkpoint: a rank that went on and tore down
    # its process group while its last transfers to rank 0 were still in flight would abort the job.
    ranks.barrier()
    return result
