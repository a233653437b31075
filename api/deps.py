"""Dependencies: settings, database session, task queue, artifact store, and fetch-or-404 lookups."""

from collections.abc import Iterator
from typing import Annotated, TypeVar

from celery import Celery
from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from api.errors import NotFound
from core.artifacts import ArtifactStore
from core.db import session_factory
from core.models import Checkpoint, Dataset, Job
from core.settings import Settings

M = TypeVar("M")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    session = session_factory(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


CeleryDep = Annotated[Celery, Depends(get_celery)]


def get_store(settings: SettingsDep) -> ArtifactStore:
    return ArtifactStore(settings.artifacts_dir)


StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def _fetch(session: Session, model: type[M], id_: str, noun: str, param: str) -> M:
    obj = session.get(model, id_)
    if obj is None:
        raise NotFound(f"no {noun} with id {id_!r}", param=param)
    return obj


def dataset_or_404(session: SessionDep, dataset_id: Annotated[str, Path()]) -> Dataset:
    return _fetch(session, Dataset, dataset_id, "dataset", "dataset_id")


def job_or_404(session: SessionDep, job_id: Annotated[str, Path()]) -> Job:
    return _fetch(session, Job, job_id, "job", "job_id")


def checkpoint_or_404(session: SessionDep, checkpoint_id: Annotated[str, Path()]) -> Checkpoint:
    return _fetch(session, Checkpoint, checkpoint_id, "checkpoint", "checkpoint_id")


DatasetDep = Annotated[Dataset, Depends(dataset_or_404)]
JobDep = Annotated[Job, Depends(job_or_404)]
CheckpointDep = Annotated[Checkpoint, Depends(checkpoint_or_404)]
