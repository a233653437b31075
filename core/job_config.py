"""A stored job as the trainers' job model: the one `Job` → `JobConfig` conversion.

The API runs it over the job it is about to store, so that every accepted job converts; the worker
runs it with what only the worker knows (where the base model and the reward models are on disk).
"""

from collections.abc import Mapping, Sequence

from pydantic import TypeAdapter

from core.models import Job
from trainers.spec.config import JobConfig

JOB_CONFIG: TypeAdapter[JobConfig] = TypeAdapter(JobConfig)


def job_config(job: Job, *, base_model: str | None = None, reward_model_dirs: Mapping[str, str] | None = None,
               reward_function_modules: Sequence[str] = ()) -> JobConfig:
    """The trainers' job model of `job`.

    Args:
        job: the job row (or one about to be stored).
        base_model: where the base model is, when `job.base_model` is a reference the service
            resolved (checkpoint:<id>, a directory under the models root); defaults to `job.base_model`.
        reward_model_dirs: checkpoint id -> model directory of each reward model the reward names.
        reward_function_modules: modules whose reward functions 'function' graders may call.

    Returns:
        The validated `DPOJob`, `RewardModelJob`, `GRPOJob` or `PPOJob`.

    Raises:
        pydantic.ValidationError: the job breaks a rule of its job model; locations start with its type.
    """
    spec = {"type": job.type, "base_model": base_model if base_model is not None else job.base_model,
            "seed": job.seed, "hyperparameters": job.hyperparameters, "lora": job.lora,
            "processes": job.processes or 1, "strategy": job.strategy or "auto"}
    if job.reward is not None:
        spec |= {"reward": job.reward, "reward_model_dirs": dict(reward_model_dirs or {}),
                 "reward_function_modules": list(reward_function_modules)}
    return JOB_CONFIG.validate_python(spec)
