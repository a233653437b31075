"""Datasets: upload, list, read, rows, delete."""

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Header, Request, Response, UploadFile, status
from fastapi.routing import APIRoute
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from api.deps import DatasetDep, ProjectDep, SessionDep, SettingsDep, StoreDep, get_project
from api.errors import ApiError, InvalidRequest
from api.pagination import PageParams, page_params
from api.schemas import (
    DatasetKind,
    DatasetPublic,
    DatasetRowsPublic,
    DatasetsPublic,
    StorableStr,
    error_responses,
)
from api.services import datasets as service
from api.services import files
from api.storable import text_problem


class UploadRoute(APIRoute):
    """Says what the multipart parser refused, where Starlette only answers "Invalid multipart data"."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                # Starlette raises this while handling MultiPartException, whose cause is the parser's error.
                refused = exc.__context__
                if exc.status_code != 400 or not isinstance(refused, MultiPartException):
                    raise
                cause = refused.__cause__
                if "header size" in str(cause):
                    raise InvalidRequest(
                        f"a header of the multipart part is longer than {DEFAULT_MAX_HEADER_SIZE} bytes: the file "
                        "name is too long (at most 512 characters are accepted)", param="file") from None
                raise ApiError(f"invalid multipart body: {cause or refused.message}") from None

        return handle


router = APIRouter(prefix="/v1/datasets", tags=["datasets"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 409, 413, 422, 503), route_class=UploadRoute)
Page = Annotated[PageParams, Depends(page_params)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetPublic)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    project: ProjectDep,
    response: Response,
    file: UploadFile,
    kind: Annotated[DatasetKind, Form(
        description="preference (reward models, DPO, KTO), prompt (PPO/GRPO), chat (SFT), feedback (KTO) or "
                    "text (PPO-ptx).")],
    name: Annotated[StorableStr | None, Form(max_length=256)] = None,
    column_map: Annotated[str | None, Form(
        description='JSON object: canonical key -> the column of the file holding it, e.g. {"prompt": "question"}. '
                    "Applied to every row before validation; other columns are kept as they are.")] = None,
    skip_invalid: Annotated[bool, Form(
        description="Store the valid rows and report the invalid ones in `skipped` (the default stores all or "
                    "none). A file with no valid row, or whose structure breaks, is still refused.")] = False,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
):
    """Upload a .jsonl, .json, .parquet or .csv file; every row is validated and all or none are stored
    (with skip_invalid=true, the valid ones)."""
    filename = file.filename or "upload.jsonl"
    problem = text_problem(filename) or ("is longer than 512 characters" if len(filename) > 512 else None)
    if problem:
        raise InvalidRequest(f"file: the file name {problem}", param="file")
    mapping = service.parse_column_map(text=column_map, kind=kind)
    dataset, created = service.create(session=session, project_id=project.id, file=file.file,
                                      filename=filename, name=name, kind=kind, column_map=mapping,
                                      skip_invalid=skip_invalid,
                                      idempotency_key=idempotency_key, max_rows=settings.max_dataset_rows,
                                      max_row_bytes=settings.max_row_bytes,
                                      stale_upload_seconds=settings.stale_upload_seconds)
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
def delete_dataset(session: SessionDep, store: StoreDep, dataset: DatasetDep) -> None:
    """Delete a dataset; 409 while an active job uses it."""
    service.remove(session=session, dataset=dataset)
    files.drop_original(store, dataset.id)  # a file uploaded through /v1/files keeps its bytes as uploaded
