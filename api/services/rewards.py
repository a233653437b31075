"""Reward specs checked against this server (its reward functions, a project's reward models), and tried."""

import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidRequest
from core.models import DatasetRow
from core.projects import project_checkpoint
from trainers.spec.graders import evaluate
from trainers.spec.reward_validation import row_problem, row_templates, validate_reward_spec
from trainers.spec.rewards import RewardSpec

DRY_RUN_TIMEOUT_S = 30.0
"""Longest a dry run may grade: graders not done by then are reported as not graded. Each call within
it is also bounded by `trainers.spec.graders.GRADER_TIMEOUT_S`, as in training."""

MAX_CHECKED_ROWS = 50_000
"""Most prompt rows a job's templates are checked against at creation, the first in file order.

The rows stream from the database by their primary key, only the `data` column. Checking a row's
fields is a few dict lookups (about 0.25 s per 100,000 rows on a shared 2-core machine); a templated
regex adds an RE2 compile per distinct rendered pattern (about 40 µs each). So 50,000 rows hold the
request for at most a few seconds and cover every row of most prompt sets (GSM8K's train split has
7,473, MATH's 7,500), where millions would hold it for minutes. Rows past the bound are left to
training, where a grader failing on every completion for 3 rollouts fails the job
(`trainers.rl.learning_signal`) and rarer failures are warning events."""


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


def check_rows(session: Session, reward: RewardSpec, dataset_id: str, param: str) -> None:
    """422 naming the grader path, the field and the row when a template cannot be rendered for a row of
    the dataset (a field it lacks or holds null), or renders a regex RE2 refuses; `MAX_CHECKED_ROWS` at most."""
    templates = row_templates(reward)
    if not templates:
        return
    rows = session.execute(
        select(DatasetRow.idx, DatasetRow.line, DatasetRow.data)
        .where(DatasetRow.dataset_id == dataset_id)
        .order_by(DatasetRow.idx)
        .limit(MAX_CHECKED_ROWS)
        .execution_options(yield_per=1000)
    )
    problem = row_problem(templates, ((r.idx, r.line, r.data) for r in rows), dataset=param)
    if problem is not None:
        field, message = problem
        raise InvalidRequest(message, param=field, details=[{"field": field, "message": message}])


def dry_run(*, reward: RewardSpec, completion: str, item: Mapping[str, Any], registry: Mapping[str, Any],
            model_scores: Mapping[str, float] | None) -> dict[str, Any]:
    """Grade one completion as training would; a grader that fails or overruns is reported in `errors`."""
    check_spec(reward, registry)
    result = evaluate(reward, completion=completion, item=item, registry=registry, model_scores=model_scores,
                      deadline=time.monotonic() + DRY_RUN_TIMEOUT_S)
    return {"reward": result.reward, "per_grader": result.per_grader, "errors": result.errors}
