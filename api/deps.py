"""Dependencies: settings, database session, task queue, model process, artifact store, and fetch-or-404
lookups.

A lookup answers 404 alike for an id that names nothing and one of another project: ids reveal nothing.
"""

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from celery import Celery
from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import NotFound, Unauthenticated
from api.services.modelops import ModelOps
from core.artifacts import Store, open_store
from core.db import session_factory
from core.models import ApiKey, Checkpoint, Dataset, Job, Project
from core.projects import authenticate, is_admin, project_checkpoint, remembered
from core.settings import Settings


# Dependencies that only read app state are `async def`: FastAPI runs a plain `def` dependency on a
# worker thread, a round trip through the thread pool that costs more than the read itself.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    # Opening a session does no I/O (it checks out a connection at its first query), so it happens
    # here; closing it may roll back over the network, so that runs on a thread, even when cancelled.
    session = session_factory(settings.database_url)()
    try:
        yield session
    finally:
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(session.close)


SessionDep = Annotated[Session, Depends(get_session)]


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


CeleryDep = Annotated[Celery, Depends(get_celery)]


async def get_registry(request: Request) -> dict[str, Callable[..., float]]:
    return request.app.state.reward_registry


RegistryDep = Annotated[dict[str, Callable[..., float]], Depends(get_registry)]


async def get_model_ops(request: Request) -> ModelOps:
    return request.app.state.model_ops


ModelOpsDep = Annotated[ModelOps, Depends(get_model_ops)]


def get_store(settings: SettingsDep) -> Store:
    return open_store(settings)  # an object store's client is made on first use, then shared


StoreDep = Annotated[Store, Depends(get_store)]


bearer = HTTPBearer(auto_error=False, description="An API key of your project: `Authorization: Bearer rlhf_...`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def get_project(session: SessionDep, credentials: Credentials) -> Project:
    """The project whose API key authenticates this request."""
    if credentials is None:
        raise Unauthenticated("an API key is required: send `Authorization: Bearer <key>`")
    # A key seen in the last seconds needs no query, so no trip through the thread pool either.
    project = (remembered(credentials.credentials)
               or await run_in_threadpool(authenticate, session, credentials.credentials))
    if project is None:
        raise Unauthenticated("the API key is not valid (unknown or revoked)")
    return project


ProjectDep = Annotated[Project, Depends(get_project)]


def require_admin(settings: SettingsDep, credentials: Credentials) -> None:
    """Only the admin key from the settings may manage projects and keys."""
    admin_key = settings.admin_api_key.get_secret_value() if settings.admin_api_key else None
    if credentials is None or not is_admin(credentials.credentials, admin_key):
        raise Unauthenticated("this endpoint needs the admin key" if admin_key else
                              "admin endpoints are disabled: set ADMIN_API_KEY")


# Ids are `<prefix>_<hex>` (core.models.new_id); anything else (NUL, spaces, non-ASCII, longer than the
# id columns) names nothing and never reaches the database, where some of it could not even be compared.
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
ID_MAX_LENGTH = 40


def is_id_shaped(value: str) -> bool:
    return 0 < len(value) <= ID_MAX_LENGTH and ID_CHARS.issuperset(value)


def _not_found(noun: str, id_: str, param: str) -> NotFound:
    return NotFound(f"no {noun} with id {id_[:64]!r}", param=param)


def dataset_or_404(session: SessionDep, project: ProjectDep, dataset_id: Annotated[str, Path()]) -> Dataset:
    dataset = session.get(Dataset, dataset_id) if is_id_shaped(dataset_id) else None
    # A dataset still `uploading` (or being deleted) is not there yet (or any more).
    if dataset is None or dataset.project_id != project.id or dataset.status != "ready":
        raise _not_found("dataset", dataset_id, "dataset_id")
    return dataset


def job_or_404(session: SessionDep, project: ProjectDep, job_id: Annotated[str, Path()]) -> Job:
    job = session.get(Job, job_id) if is_id_shaped(job_id) else None
    if job is None or job.project_id != project.id:
        raise _not_found("job", job_id, "job_id")
    return job


def checkpoint_or_404(session: SessionDep, project: ProjectDep,
                      checkpoint_id: Annotated[str, Path()]) -> Checkpoint:
    checkpoint = project_checkpoint(session, project.id, checkpoint_id) if is_id_shaped(checkpoint_id) else None
    if checkpoint is None:
        raise _not_found("checkpoint", checkpoint_id, "checkpoint_id")
    return checkpoint


def managed_project_or_404(session: SessionDep, project_id: Annotated[str, Path()]) -> Project:
    """The project an admin endpoint names (any project: the admin key is not scoped to one)."""
    project = session.get(Project, project_id) if is_id_shaped(project_id) else None
    if project is None:
        raise _not_found("project", project_id, "project_id")
    return project


def api_key_or_404(session: SessionDep, key_id: Annotated[str, Path()]) -> ApiKey:
    """The API key an admin endpoint names, of any project."""
    key = session.get(ApiKey, key_id) if is_id_shaped(key_id) else None
    if key is None:
        raise _not_found("API key", key_id, "key_id")
    return key


DatasetDep = Annotated[Dataset, Depends(dataset_or_404)]
JobDep = Annotated[Job, Depends(job_or_404)]
CheckpointDep = Annotated[Checkpoint, Depends(checkpoint_or_404)]
ManagedProjectDep = Annotated[Project, Depends(managed_project_or_404)]
ApiKeyDep = Annotated[ApiKey, Depends(api_key_or_404)]
