"""Schemas of the OpenAI-compatible layer's files (`/v1/files`)."""

from typing import Literal

from pydantic import BaseModel, Field

from trainers.spec.formats import DatasetKind

FilePurpose = Literal["fine-tune"]


class FileObject(BaseModel):
    """OpenAI's File object; a file is a dataset, so `id` is also a `dataset_id` of the native API."""

    id: str = Field(examples=["file-3f9a0c1e5b7d294a6c8e0f12"])
    object: Literal["file"] = "file"
    bytes: int = Field(description="Size of the uploaded file in bytes.")
    created_at: int = Field(description="Unix time in seconds.")
    filename: str
    purpose: FilePurpose = "fine-tune"
    status: Literal["processed"] = Field(
        "processed", description="Always processed: a file is validated whole while it uploads.")
    status_details: str | None = None
    expires_at: int | None = Field(None, description="Always null: files are kept until deleted.")
    kind: DatasetKind = Field(description="The dataset kind told from the rows (not an OpenAI field): chat for "
                                          "supervised, preference for DPO, prompt for reinforcement.")
    row_count: int = Field(description="Rows stored (not an OpenAI field).")


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = Field(description="The first file of the page, or null if it is empty.")
    last_id: str | None = Field(description="The last file of the page: the `after` of the next one.")


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool
