"""Reward specs tried on a sample before a PPO/GRPO job depends on them."""

from fastapi import APIRouter, Depends

from api.deps import RegistryDep, get_project
from api.schemas import GraderRunPublic, GraderRunRequest, error_responses
from api.services import rewards
from trainers.graders import evaluate

router = APIRouter(prefix="/v1/graders", tags=["graders"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 413, 422, 503))


@router.post("/run", response_model=GraderRunPublic)
def run_grader(body: GraderRunRequest, registry: RegistryDep):
    """Grade one completion with a reward spec; model rewards use the scores given in `model_scores`."""
    rewards.check_spec(body.reward, registry)
    result = evaluate(body.reward, completion=body.completion, item=body.item, registry=registry,
                      model_scores=body.model_scores)
    return {"reward": result.reward, "per_grader": result.per_grader, "errors": result.errors}
