"""Datasets: upload, list, read, rows, delete."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, Response, UploadFile, status

from api.deps import DatasetDep, ProjectDep, SessionDep, SettingsDep, get_project
from api.pagination import PageParams, page_params
from api.schemas import DatasetKind, DatasetPublic, DatasetRowsPublic, DatasetsPublic, error_responses
from api.services import datasets as service

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 409, 413, 422, 503))
Page = Annotated[PageParams, Depends(page_params)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    project: ProjectDep,
    response: Response,
    file: UploadFile,
    kind: Annotated[DatasetKind, Form(description="preference (for reward models and DPO) or prompt (PPO/GRPO).")],
    name: Annotated[str | None, Form(max_length=256)] = None,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
):
    """Upload a .jsonl, .json, .parquet or .csv file; every row is validated and all or none are stored."""
    dataset, created = service.create(session=session, project_id=project.id, file=file.file,
                                      filename=file.filename or "upload.jsonl", name=name, kind=kind,
                                      idempotency_key=idempotency_key, max_rows=settings.max_dataset_rows,
                                      max_row_bytes=settings.max_row_bytes)
    if not created:
        response.status_code = status.HTTP_200_OK
    return dataset


@router.get("", response_model=DatasetsPublic)
def list_datasets(session: SessionDep, project: ProjectDep, page: Page):
    """List datasets, newest first."""
    data, has_more = service.list_page(session=session, project_id=project.id, limit=page.limit, after=page.after)
    return {"data": data, "has_more": has_more}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset: DatasetDep):
    """Read one dataset."""
    return dataset


@router.get("/{dataset_id}/rows", response_model=DatasetRowsPublic)
def list_dataset_rows(session: SessionDep, dataset: DatasetDep, page: Page):
    """Rows of a dataset in their normalised form, in file order (`after` is a row idx)."""
    data, has_more = service.rows_page(session=session, dataset=dataset, limit=page.limit, after=page.after)
    return {"data": data, "has_more": has_more}


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(session: SessionDep, dataset: DatasetDep) -> None:
    """Delete a dataset; 409 while an active job uses it."""
    service.remove(session=session, dataset=dataset)
