"""Reward specs tried on a sample before a PPO/GRPO job depends on them."""

from fastapi import APIRouter, Depends

from api.deps import RegistryDep, get_project
from api.schemas import GraderRunPublic, GraderRunRequest, error_responses
from api.services import rewards

router = APIRouter(prefix="/v1/graders", tags=["graders"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 413, 422, 503))


# A plain `def`: FastAPI runs it in its thread pool, off the event loop. Grading never holds the GIL
# for long (RE2 releases it while matching; reward functions run in threads of their own) and ends
# by the dry run's deadline, so other requests are served meanwhile.
@router.post("/run", response_model=GraderRunPublic)
def run_grader(body: GraderRunRequest, registry: RegistryDep):
    """Grade one completion with a reward spec; model rewards use the scores given in `model_scores`."""
    return rewards.dry_run(reward=body.reward, completion=body.completion, item=body.item, registry=registry,
                           model_scores=body.model_scores)
