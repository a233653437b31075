"""OpenAI-compatible routes: /v1/models (base models, the project's fine-tuned models and checkpoints)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from api.deps import ProjectDep, SessionDep, SettingsDep, get_project
from api.schemas import ErrorResponse, error_responses
from api.schemas_openai_models import ModelDeleted, ModelList, ModelObject
from api.services import models

router = APIRouter(prefix="/v1/models", tags=["openai: models"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 422, 503))

# Model ids hold ':' and '/' (`ft:builtin:tiny-llama:...`, `org/name`), hence a path parameter.
ModelPath = Annotated[str, Path(description="A model id as listed, e.g. `builtin:tiny-llama` or `ft:...`.")]


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, settings: SettingsDep, project: ProjectDep):
    """Models this project can complete chats with: base models, its fine-tuned models and their checkpoints."""
    return {"object": "list", "data": models.list_models(session=session, settings=settings, project=project)}


@router.get("/{model:path}", response_model=ModelObject)
def get_model(session: SessionDep, settings: SettingsDep, project: ProjectDep, model: ModelPath):
    """Read one model."""
    return models.get_model(session=session, settings=settings, project=project, model=model)


@router.delete("/{model:path}", response_model=ModelDeleted,
               responses={403: {"model": ErrorResponse, "description": "A base model or a checkpoint"}})
def delete_model(session: SessionDep, settings: SettingsDep, project: ProjectDep, model: ModelPath):
    """Delete a fine-tuned model of this project; it and its checkpoints are no longer listed or served."""
    return models.delete_model(session=session, settings=settings, project=project, model=model)
