"""Reward specs checked against this server: its reward functions and a project's reward models."""

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidRequest
from core.models import Checkpoint, Job
from trainers.rewards_spec import RewardSpec, validate_reward_spec


def check_spec(reward: RewardSpec, registry: Mapping[str, Any]) -> None:
    """422 naming the first problem (all of them in `details`) when the spec cannot work here."""
    problems = validate_reward_spec(reward, registry=registry)
    if problems:
        field, message = problems[0]
        raise InvalidRequest(f"{field}: {message}", param=field,
                             details=[{"field": f, "message": m} for f, m in problems])


def check_reward_models(session: Session, project_id: str, reward: RewardSpec) -> None:
    """Every 'model' reward names a reward-model checkpoint of this project."""
    graders = reward.graders if reward.type == "multi" else [reward]
    for i, grader in enumerate(graders):
        if grader.type != "model":
            continue
        field = f"reward.graders[{i}].checkpoint_id" if reward.type == "multi" else "reward.checkpoint_id"
        ckpt = session.scalar(select(Checkpoint).join(Job, Job.id == Checkpoint.job_id)
                              .where(Checkpoint.id == grader.checkpoint_id, Job.project_id == project_id))
        if ckpt is None:
            raise InvalidRequest(f"{field}: no checkpoint with id {grader.checkpoint_id!r}", param=field)
        if (ckpt.model_info or {}).get("kind") != "reward_model":
            raise InvalidRequest(f"{field}: checkpoint {ckpt.id} is not a reward model (train one with a "
                                 "reward_model job)", param=field)
