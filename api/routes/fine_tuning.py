"""OpenAI-compatible routes: /v1/fine_tuning/jobs (create, list, read, cancel, pause, resume, events,
checkpoints)."""

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request

from api.deps import CeleryDep, ProjectDep, RegistryDep, SessionDep, SettingsDep, get_project, is_id_shaped
from api.errors import InvalidRequest, NotFound
from api.schemas import error_responses
from api.schemas_fine_tuning import (
    FineTuningJobCheckpointsPublic,
    FineTuningJobCreate,
    FineTuningJobEventsPublic,
    FineTuningJobPublic,
    FineTuningJobsPublic,
)
from api.services import fine_tuning as service
from api.services import fine_tuning_objects as objects
from api.services import jobs as native
from core.models import Job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["openai: fine-tuning"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 409, 413, 503))
Limit = Annotated[int, Query(ge=1, le=1000, description="Items per page.")]
After = Annotated[str | None, Query(description="Cursor: the id of the last item of the previous page.")]


def fine_tuning_job_or_404(session: SessionDep, project: ProjectDep,
                           fine_tuning_job_id: Annotated[str, Path()]) -> Job:
    job = session.get(Job, fine_tuning_job_id) if is_id_shaped(fine_tuning_job_id) else None
    if job is None or job.project_id != project.id or not service.is_fine_tuning_job(job):
        raise NotFound(f"no fine-tuning job with id {fine_tuning_job_id[:64]!r}", param="fine_tuning_job_id")
    return job


FineTuningJobDep = Annotated[Job, Depends(fine_tuning_job_or_404)]


def _metadata_filter(request: Request) -> dict[str, str] | None | bool:
    """`metadata[k]=v` pairs of the query (as the SDK sends them); `metadata=null` for jobs without metadata;
    False when the query has no metadata filter."""
    params = request.query_params
    if params.get("metadata") == "null":
        if any(key.startswith("metadata[") for key in params):
            raise InvalidRequest("give metadata=null or metadata[key]=value, not both", param="metadata")
        return None
    pairs = {key[len("metadata["):-1]: value for key, value in params.multi_items()
             if key.startswith("metadata[") and key.endswith("]")}
    return pairs or False


@router.post("", response_model=FineTuningJobPublic)
def create_fine_tuning_job(
    session: SessionDep, celery: CeleryDep, settings: SettingsDep, project: ProjectDep, registry: RegistryDep,
    body: Annotated[FineTuningJobCreate, Body()],
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
):
    """Create a fine-tuning job (supervised → sft, dpo → dpo, reinforcement → grpo)."""
    job = service.create(session=session, celery=celery, settings=settings, project=project, body=body,
                         registry=registry, idempotency_key=idempotency_key)
    return objects.job_object(session, job, project.name)


@router.get("", response_model=FineTuningJobsPublic)
def list_fine_tuning_jobs(request: Request, session: SessionDep, project: ProjectDep, limit: Limit = 20,
                          after: After = None):
    """Fine-tuning jobs, newest first; `metadata[k]=v` keeps the jobs with those pairs."""
    jobs, has_more = service.list_page(session=session, project_id=project.id, limit=limit, after=after,
                                       metadata=_metadata_filter(request))
    return {"object": "list", "data": [objects.job_object(session, job, project.name) for job in jobs],
            "has_more": has_more}


@router.get("/{fine_tuning_job_id}", response_model=FineTuningJobPublic)
def get_fine_tuning_job(session: SessionDep, project: ProjectDep, job: FineTuningJobDep):
    """Read one fine-tuning job."""
    return objects.job_object(session, job, project.name)


@router.post("/{fine_tuning_job_id}/cancel", response_model=FineTuningJobPublic)
def cancel_fine_tuning_job(session: SessionDep, settings: SettingsDep, celery: CeleryDep, project: ProjectDep,
                           job: FineTuningJobDep):
    """Cancel: a queued or paused job at once, a running one at its next step."""
    job = native.cancel(session=session, settings=settings, celery=celery, job=job)
    return objects.job_object(session, job, project.name)


@router.post("/{fine_tuning_job_id}/pause", response_model=FineTuningJobPublic)
def pause_fine_tuning_job(session: SessionDep, settings: SettingsDep, celery: CeleryDep, project: ProjectDep,
                          job: FineTuningJobDep):
    """Pause: a running job checkpoints and stops at its next step; resume continues from there."""
    job = native.pause(session=session, settings=settings, celery=celery, job=job)
    return objects.job_object(session, job, project.name)


@router.post("/{fine_tuning_job_id}/resume", response_model=FineTuningJobPublic)
def resume_fine_tuning_job(session: SessionDep, settings: SettingsDep, celery: CeleryDep, project: ProjectDep,
                           job: FineTuningJobDep):
    """Resume a paused job: it is queued again and continues from its latest checkpoint."""
    job = native.resume(session=session, settings=settings, celery=celery, job=job)
    return objects.job_object(session, job, project.name)


@router.get("/{fine_tuning_job_id}/events", response_model=FineTuningJobEventsPublic)
def list_fine_tuning_events(session: SessionDep, job: FineTuningJobDep, limit: Limit = 20, after: After = None):
    """Status changes, messages and per-step metrics, newest first."""
    data, has_more = objects.events_page(session=session, job=job, limit=limit, after=after)
    return {"object": "list", "data": data, "has_more": has_more}


@router.get("/{fine_tuning_job_id}/checkpoints", response_model=FineTuningJobCheckpointsPublic)
def list_fine_tuning_checkpoints(session: SessionDep, project: ProjectDep, job: FineTuningJobDep,
                                 limit: Limit = 10, after: After = None):
    """Checkpoints, newest first, each named as a model (`...:ckpt-step-N`)."""
    checkpoints, has_more = objects.checkpoints_page(session=session, job=job, limit=limit, after=after)
    return {"object": "list", "has_more": has_more,
            "data": [objects.checkpoint_object(checkpoint, job, project.name) for checkpoint in checkpoints]}
