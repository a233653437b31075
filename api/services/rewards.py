"""Reward specs checked against this server (its reward functions, a project's reward models), and tried."""

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from api.errors import InvalidRequest
from core.projects import project_checkpoint
from trainers.spec.graders import evaluate
from trainers.spec.reward_validation import validate_reward_spec
from trainers.spec.rewards import RewardSpec

DRY_RUN_TIMEOUT_S = 30.0
"""Longest a dry run may grade: graders not done by then are reported as not graded. Each call within
it is also bounded by `trainers.spec.graders.GRADER_TIMEOUT_S`, as in training."""


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
        ckpt = project_checkpoint(session, project_id, grader.checkpoint_id)
        if ckpt is None:
            raise InvalidRequest(f"{field}: no checkpoint with id {grader.checkpoint_id!r}", param=field)
        if (ckpt.model_info or {}).get("kind") != "reward_model":
            raise InvalidRequest(f"{field}: checkpoint {ckpt.id} is not a reward model (train one with a "
                                 "reward_model job)", param=field)


def dry_run(*, reward: RewardSpec, completion: str, item: Mapping[str, Any], registry: Mapping[str, Any],
            model_scores: Mapping[str, float] | None) -> dict[str, Any]:
    """Grade one completion as training would; a grader that fails or overruns is reported in `errors`."""
    check_spec(reward, registry)
    result = evaluate(reward, completion=completion, item=item, registry=registry, model_scores=model_scores,
                      deadline=time.monotonic() + DRY_RUN_TIMEOUT_S)
    return {"reward": result.reward, "per_grader": result.per_grader, "errors": result.errors}
