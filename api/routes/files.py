"""OpenAI-compatible routes: /v1/files (a file is a dataset; its id is a dataset_id of the native API)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Path, Query, UploadFile
from fastapi.responses import StreamingResponse

from api.deps import ProjectDep, SessionDep, SettingsDep, StoreDep, get_project
from api.routes.datasets import UploadRoute
from api.schemas import error_responses
from api.schemas_files import FileDeleted, FileList, FileObject
from api.services import files as service
from core.models import Dataset


def file_or_404(session: SessionDep, project: ProjectDep, file_id: Annotated[str, Path()]) -> Dataset:
    return service.get_file(session=session, project_id=project.id, file_id=file_id)


FileDep = Annotated[Dataset, Depends(file_or_404)]

router = APIRouter(prefix="/v1/files", tags=["openai: files"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 409, 413, 503), route_class=UploadRoute)


@router.post("", response_model=FileObject)  # 200, as OpenAI answers an upload
def create_file(
    session: SessionDep,
    settings: SettingsDep,
    project: ProjectDep,
    store: StoreDep,
    file: Annotated[UploadFile, File(description="JSONL training data (also .json, .csv, .parquet as datasets "
                                                 "take); the kind is told from the first row.")],
    purpose: Annotated[str, Form(description="Must be fine-tune.")],
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
):
    """Upload a training file: every row is validated as the kind its first row shows, and all or none stored."""
    dataset, _ = service.create(
        session=session, store=store, project_id=project.id, file=file.file,
        filename=file.filename or "upload.jsonl", purpose=purpose, idempotency_key=idempotency_key,
        max_rows=settings.max_dataset_rows, max_row_bytes=settings.max_row_bytes,
        stale_upload_seconds=settings.stale_upload_seconds)
    return service.file_object(dataset)


@router.get("", response_model=FileList)
def list_files(
    session: SessionDep,
    project: ProjectDep,
    after: Annotated[str | None, Query(description="Cursor: the id of the last file of the previous page.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query(description="By created_at.")] = "desc",
    purpose: Annotated[str | None, Query(description="Only files of this purpose (all are fine-tune).")] = None,
):
    """List files (every dataset of the project), newest first unless order=asc."""
    data, has_more = service.list_page(session=session, project_id=project.id, limit=limit, after=after,
                                       order=order, purpose=purpose)
    objects = [service.file_object(d) for d in data]
    return {"object": "list", "data": objects, "has_more": has_more,
            "first_id": objects[0]["id"] if objects else None, "last_id": objects[-1]["id"] if objects else None}


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(dataset: FileDep):
    """Read one file."""
    return service.file_object(dataset)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(session: SessionDep, store: StoreDep, dataset: FileDep):
    """Delete a file; 409 while an active job uses it."""
    file_id = dataset.id
    service.remove(session=session, store=store, dataset=dataset)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "The bytes as uploaded (a native dataset: its rows as JSONL)"}})
def retrieve_file_content(settings: SettingsDep, store: StoreDep, dataset: FileDep):
    """The file's bytes as uploaded; a dataset uploaded through /v1/datasets answers its stored rows as JSONL."""
    chunks, original = service.content(store=store, database_url=settings.database_url, dataset=dataset)
    headers = {"Content-Length": str(dataset.size_bytes), "ETag": f'"{dataset.sha256}"'} if original else {}
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
