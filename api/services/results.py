"""What a job produced: metrics, events and checkpoints, and checkpoint archives."""

from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.services.paging import ascending_page
from core.artifacts import ArtifactStore, iter_tar
from core.model_refs import MODEL_SUBDIR
from core.models import Checkpoint, Job, JobEvent, Metric


def metrics_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[Metric], bool]:
    """Metrics by step; `after` is a step."""
    stmt = select(Metric).where(Metric.job_id == job.id)
    return ascending_page(session, stmt, Metric.step, limit=limit, after=after)


def events_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[JobEvent], bool]:
    """Events in order; `after` is an event id."""
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    return ascending_page(session, stmt, JobEvent.id, limit=limit, after=after)


def checkpoints_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[Checkpoint], bool]:
    """Checkpoints by step; `after` is a step."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    return ascending_page(session, stmt, Checkpoint.step, limit=limit, after=after)


def archive(*, store: ArtifactStore, checkpoint: Checkpoint) -> Iterator[bytes]:
    """The checkpoint's model directory as a tar stream (the bytes its sha256 was taken of)."""
    return iter_tar(store.path(checkpoint.artifact_key) / MODEL_SUBDIR, checkpoint.id)
