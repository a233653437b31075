"""Administration with the admin key: projects and their API keys."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status
from sqlalchemy import select

from api.deps import SessionDep, is_id_shaped, require_admin
from api.errors import NotFound
from api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeysPublic,
    ProjectCreate,
    ProjectPublic,
    ProjectsPublic,
    error_responses,
)
from core.models import ApiKey, Project
from core.projects import create_key, create_project, revoke_key

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(400, 401, 404, 413, 422, 503))


def _project(session, project_id: str) -> Project:
    project = session.get(Project, project_id) if is_id_shaped(project_id) else None
    if project is None:
        raise NotFound(f"no project with id {project_id[:64]!r}", param="project_id")
    return project


@router.post("/projects", status_code=status.HTTP_201_CREATED, response_model=ProjectPublic)
def add_project(session: SessionDep, body: ProjectCreate):
    """Create a project."""
    project = create_project(session, body.name)
    session.commit()
    return project


@router.get("/projects", response_model=ProjectsPublic)
def list_projects(session: SessionDep):
    """All projects."""
    return {"data": session.scalars(select(Project).order_by(Project.created_at)).all(), "has_more": False}


@router.post("/projects/{project_id}/keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def add_key(session: SessionDep, project_id: Annotated[str, Path()], body: ApiKeyCreate):
    """Create an API key for a project; the key is in this response only."""
    _project(session, project_id)
    key, plaintext = create_key(session, project_id, body.name)
    session.commit()
    return {**ApiKeyPublic.model_validate(key).model_dump(), "key": plaintext}


@router.get("/projects/{project_id}/keys", response_model=ApiKeysPublic)
def list_keys(session: SessionDep, project_id: Annotated[str, Path()]):
    """A project's keys (never the keys themselves)."""
    _project(session, project_id)
    keys = session.scalars(select(ApiKey).where(ApiKey.project_id == project_id).order_by(ApiKey.created_at)).all()
    return {"data": keys, "has_more": False}


@router.post("/keys/{key_id}/revoke", response_model=ApiKeyPublic)
def revoke(session: SessionDep, key_id: Annotated[str, Path()]):
    """Revoke a key: requests with it answer 401 from now on."""
    key = session.get(ApiKey, key_id) if is_id_shaped(key_id) else None
    if key is None:
        raise NotFound(f"no API key with id {key_id[:64]!r}", param="key_id")
    revoke_key(session, key)
    session.commit()
    return key
