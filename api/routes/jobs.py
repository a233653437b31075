"""Jobs: create, list, read, cancel, pause, resume; their metrics, samples, events, checkpoints and live stream."""

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from api.deps import CeleryDep, JobDep, ProjectDep, RegistryDep, SessionDep, SettingsDep, get_project
from api.pagination import PageParams, page_params
from api.schemas import (
    CheckpointsPublic,
    EventsPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
    MetricsPublic,
    SamplesPublic,
    error_responses,
)
from api.services import jobs as service
from api.services import results
from api.services.stream import job_stream, parse_last_event_id
from trainers.spec.config import JobType

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 409, 413, 422, 503))
Page = Annotated[PageParams, Depends(page_params)]
JobStatusFilter = Literal["queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed", "cancelled"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(
    session: SessionDep, celery: CeleryDep, settings: SettingsDep, project: ProjectDep, registry: RegistryDep,
    response: Response,
    body: Annotated[JobCreate, Body()],
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
):
    """Create a training job; a repeated Idempotency-Key returns the first job."""
    job, created = service.create(session=session, celery=celery, settings=settings, project_id=project.id,
                                  body=body, idempotency_key=idempotency_key, registry=registry)
    if not created:
        response.status_code = status.HTTP_200_OK
    return job


@router.get("", response_model=JobsPublic)
def list_jobs(session: SessionDep, project: ProjectDep, page: Page,
              status: Annotated[JobStatusFilter | None, Query()] = None,
              type: Annotated[JobType | None, Query()] = None):
    """List jobs, newest first, filtered by status and type."""
    data, has_more = service.list_page(session=session, project_id=project.id, limit=page.limit, after=page.after,
                                       status=status, type_=type)
    return {"data": data, "has_more": has_more}


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job: JobDep):
    """Read one job."""
    return job


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(session: SessionDep, settings: SettingsDep, celery: CeleryDep, job: JobDep):
    """Cancel a job: queued and paused jobs at once (a queued job's message leaves the queue), running and
    pausing jobs at their next step (checkpoint kept)."""
    return service.cancel(session=session, settings=settings, celery=celery, job=job)


@router.post("/{job_id}/pause", response_model=JobPublic,
             responses={200: {"description": "The job, `paused` (it was queued) or `pausing` (it was running); "
                                             "a job already pausing or paused, unchanged."},
                        409: {"description": "The job is cancelling or has ended (succeeded, failed, cancelled)."}})
def pause_job(session: SessionDep, settings: SettingsDep, celery: CeleryDep, job: JobDep):
    """Pause a job: a queued job at once, a running job at its next step, with a checkpoint to resume from."""
    return service.pause(session=session, settings=settings, celery=celery, job=job)


@router.post("/{job_id}/resume", response_model=JobPublic,
             responses={200: {"description": "The job, `queued` again; its run continues from its latest "
                                             "checkpoint (or from the start if it has none)."},
                        409: {"description": "The job is not paused."}})
def resume_job(session: SessionDep, settings: SettingsDep, celery: CeleryDep, job: JobDep):
    """Resume a paused job: it is queued again and continues from its latest checkpoint."""
    return service.resume(session=session, settings=settings, celery=celery, job=job)


@router.get("/{job_id}/metrics", response_model=MetricsPublic)
def list_metrics(session: SessionDep, job: JobDep, page: Page):
    """Metrics by step (`after` is a step)."""
    data, has_more = results.metrics_page(session=session, job=job, limit=page.limit, after=page.after)
    return {"data": data, "has_more": has_more}


@router.get("/{job_id}/samples", response_model=SamplesPublic)
def list_samples(session: SessionDep, job: JobDep, page: Page):
    """PPO/GRPO: a few completions of each logged rollout, with their rewards, by step (`after` is a step)."""
    data, has_more = results.samples_page(session=session, job=job, limit=page.limit, after=page.after)
    return {"data": data, "has_more": has_more}


@router.get("/{job_id}/events", response_model=EventsPublic)
def list_events(session: SessionDep, job: JobDep, page: Page):
    """Status changes, warnings, errors and checkpoints, in order (`after` is an event id)."""
    data, has_more = results.events_page(session=session, job=job, limit=page.limit, after=page.after)
    return {"data": data, "has_more": has_more}


@router.get("/{job_id}/checkpoints", response_model=CheckpointsPublic)
def list_checkpoints(session: SessionDep, job: JobDep, page: Page):
    """Checkpoints by step (`after` is a step)."""
    data, has_more = results.checkpoints_page(session=session, job=job, limit=page.limit, after=page.after)
    return {"data": data, "has_more": has_more}


@router.get("/{job_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events: metrics, samples, event, status, checkpoint."}})
def stream_job(request: Request, settings: SettingsDep, session: SessionDep, job: JobDep,
               last_event_id: Annotated[str | None, Header()] = None):
    """Live metrics, samples, events, status changes and checkpoints; resumable with Last-Event-ID
    (`<event>-<metric>-<sample>`); closes once the job has ended or is paused."""
    parse_last_event_id(last_event_id)  # reject a malformed header before the stream starts
    # The request's session (authentication, the job lookup) would otherwise stay open, in its
    # transaction, for the life of the stream; the stream reads in short transactions of its own.
    session.close()
    frames = job_stream(settings=settings, job_id=job.id, last_event_id=last_event_id,
                        is_disconnected=request.is_disconnected)
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
