"""Checkpoints: read, download (adapter or merged), and score text with reward models."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api.deps import CheckpointDep, ModelOpsDep, SessionDep, SettingsDep, StoreDep, get_project
from api.schemas import CheckpointPublic, ErrorResponse, ScoreRequest, ScoresPublic, error_responses
from api.services import results
from api.services.modelops import ModelOps
from core.artifacts import Store
from core.models import Checkpoint
from core.settings import Settings

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 413, 422, 500, 503))


TIMED_OUT = {504: {"model": ErrorResponse, "description": "The model operation outlived MODEL_OPS_TIMEOUT_SECONDS"}}


@router.get("/{checkpoint_id}", response_model=CheckpointPublic)
def get_checkpoint(checkpoint: CheckpointDep):
    """Read one checkpoint."""
    return checkpoint


@router.get("/{checkpoint_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}},
                             "description": "tar of a save_pretrained directory"}, **TIMED_OUT})
def download_checkpoint(
    session: SessionDep, settings: SettingsDep, checkpoint: CheckpointDep, store: StoreDep, ops: ModelOpsDep,
    merged: Annotated[bool, Query(description="LoRA checkpoints: base and adapter merged into one model.")] = False,
):
    """Stream the checkpoint as a tar archive (weights, config, tokenizer; a LoRA job's adapter)."""
    return archive_response(session=session, settings=settings, store=store, ops=ops, checkpoint=checkpoint,
                            merged=merged)


def archive_response(*, session: Session, settings: Settings, store: Store, ops: ModelOps, checkpoint: Checkpoint,
                     merged: bool) -> StreamingResponse:
    """The checkpoint's tar archive as a streamed response: its download here, and its download links'."""
    if merged:
        frames, size, sha256 = results.merged_archive(session=session, settings=settings, store=store, ops=ops,
                                                      checkpoint=checkpoint)
    else:
        frames, size, sha256 = results.archive(store=store, checkpoint=checkpoint)
    name = f"{checkpoint.id}-merged" if merged and results.is_adapter(checkpoint) else checkpoint.id
    return StreamingResponse(
        frames, media_type="application/x-tar",
        headers={"Content-Length": str(size), "ETag": f'"{sha256}"',
                 "Content-Disposition": f'attachment; filename="{name}.tar"'},
    )


@router.post("/{checkpoint_id}/score", response_model=ScoresPublic, responses=TIMED_OUT)
def score_with_checkpoint(settings: SettingsDep, checkpoint: CheckpointDep, store: StoreDep, ops: ModelOpsDep,
                          body: ScoreRequest):
    """Score texts or prompt/response pairs with a reward-model checkpoint (raw and normalised)."""
    if body.texts is not None:
        items, field = [{"text": t} for t in body.texts], "texts"
    else:
        items, field = [p.model_dump() for p in body.pairs], "pairs"
    data = results.score(settings=settings, store=store, ops=ops, checkpoint=checkpoint, items=items, field=field)
    return {"checkpoint_id": checkpoint.id, "data": data}
