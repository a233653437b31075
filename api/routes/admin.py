"""Administration with the admin key: projects and their API keys."""

from fastapi import APIRouter, Depends, status

from api.deps import ApiKeyDep, ManagedProjectDep, SessionDep, require_admin
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
from api.services import projects as service

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(400, 401, 404, 413, 422, 503))


@router.post("/projects", status_code=status.HTTP_201_CREATED, response_model=ProjectPublic)
def add_project(session: SessionDep, body: ProjectCreate):
    """Create a project."""
    return service.create(session=session, name=body.name)


@router.get("/projects", response_model=ProjectsPublic)
def list_projects(session: SessionDep):
    """All projects."""
    return {"data": service.list_all(session=session), "has_more": False}


@router.post("/projects/{project_id}/keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def add_key(session: SessionDep, project: ManagedProjectDep, body: ApiKeyCreate):
    """Create an API key for a project; the key is in this response only."""
    key, plaintext = service.add_key(session=session, project=project, name=body.name)
    return {**ApiKeyPublic.model_validate(key).model_dump(), "key": plaintext}


@router.get("/projects/{project_id}/keys", response_model=ApiKeysPublic)
def list_keys(session: SessionDep, project: ManagedProjectDep):
    """A project's keys (never the keys themselves)."""
    return {"data": service.keys_of(session=session, project=project), "has_more": False}


@router.post("/keys/{key_id}/revoke", response_model=ApiKeyPublic)
def revoke(session: SessionDep, key: ApiKeyDep):
    """Revoke a key: requests with it answer 401 from now on."""
    return service.revoke(session=session, key=key)
