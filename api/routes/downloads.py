"""Download links: a checkpoint's archive at a URL that needs no API key, for a browser's plain link."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.deps import CheckpointDep, ModelOpsDep, ProjectDep, SessionDep, SettingsDep, StoreDep
from api.docs import root_path
from api.routes.checkpoints import TIMED_OUT, archive_response
from api.schemas import error_responses
from api.services import downloads

router = APIRouter(tags=["checkpoints"])
DOWNLOADS_PATH = "/v1/downloads"


class DownloadLinkPublic(BaseModel):
    object: Literal["download_link"] = "download_link"
    url: str = Field(description="Where to GET the archive, without an API key: a path on this server "
                                 "(`/v1/downloads/<token>`). The token is shown only here.")
    checkpoint_id: str
    merged: bool = Field(description="Whether the link gives a LoRA checkpoint's base and adapter merged.")
    expires_at: datetime = Field(description="The link serves any number of downloads until then "
                                             "(DOWNLOAD_LINK_SECONDS after it was made).")


@router.post("/v1/checkpoints/{checkpoint_id}/download_link", status_code=status.HTTP_201_CREATED,
             response_model=DownloadLinkPublic, responses=error_responses(401, 404, 422, 503))
def create_download_link(
    request: Request, session: SessionDep, settings: SettingsDep, project: ProjectDep, checkpoint: CheckpointDep,
    merged: Annotated[bool, Query(description="LoRA checkpoints: base and adapter merged into one model.")] = False,
):
    """A short-lived link that downloads the checkpoint without an API key (for a browser's plain link): what
    GET /v1/checkpoints/{id}/download streams, for any number of GETs until `expires_at`."""
    link = downloads.create_link(session=session, settings=settings, project_id=project.id, checkpoint=checkpoint,
                                 merged=merged)
    return DownloadLinkPublic(url=f"{root_path(request)}{DOWNLOADS_PATH}/{link.token}",
                              checkpoint_id=link.checkpoint_id, merged=link.merged, expires_at=link.expires_at)


@router.get(DOWNLOADS_PATH + "/{token}", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}}, "description": "tar of a save_pretrained directory"},
                       **error_responses(404, 503), **TIMED_OUT})
def download_with_link(
    session: SessionDep, settings: SettingsDep, store: StoreDep, ops: ModelOpsDep,
    token: Annotated[str, Path(max_length=64, description="The token of a link from "
                                                        "POST /v1/checkpoints/{id}/download_link.")],
):
    """Stream the checkpoint of a download link (no API key: the token is the credential); 404 once it expired."""
    checkpoint, merged = downloads.redeem(session=session, token=token)
    return archive_response(session=session, settings=settings, store=store, ops=ops, checkpoint=checkpoint,
                            merged=merged)
