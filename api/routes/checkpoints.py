"""Checkpoints: read, download (adapter or merged), and score text with reward models."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from api.deps import CheckpointDep, SessionDep, SettingsDep, StoreDep, get_project
from api.schemas import CheckpointPublic, ScoreRequest, ScoresPublic, error_responses
from api.services import results

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], dependencies=[Depends(get_project)],
                   responses=error_responses(400, 401, 404, 413, 422, 500, 503))


@router.get("/{checkpoint_id}", response_model=CheckpointPublic)
def get_checkpoint(checkpoint: CheckpointDep):
    """Read one checkpoint."""
    return checkpoint


@router.get("/{checkpoint_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}},
                             "description": "tar of a save_pretrained directory"}})
def download_checkpoint(
    session: SessionDep, settings: SettingsDep, checkpoint: CheckpointDep, store: StoreDep,
    merged: Annotated[bool, Query(description="LoRA checkpoints: base and adapter merged into one model.")] = False,
):
    """Stream the checkpoint as a tar archive (weights, config, tokenizer; a LoRA job's adapter)."""
    if merged:
        frames, size, sha256 = results.merged_archive(session=session, settings=settings, store=store,
                                                      checkpoint=checkpoint)
    else:
        frames, size, sha256 = results.archive(store=store, checkpoint=checkpoint)
    name = f"{checkpoint.id}-merged" if merged and results.is_adapter(checkpoint) else checkpoint.id
    return StreamingResponse(
        frames, media_type="application/x-tar",
        headers={"Content-Length": str(size), "ETag": f'"{sha256}"',
                 "Content-Disposition": f'attachment; filename="{name}.tar"'},
    )


@router.post("/{checkpoint_id}/score", response_model=ScoresPublic)
def score_with_checkpoint(settings: SettingsDep, checkpoint: CheckpointDep, store: StoreDep, body: ScoreRequest):
    """Score texts or prompt/response pairs with a reward-model checkpoint (raw and normalised)."""
    items = [{"text": t} for t in body.texts] if body.texts is not None else [p.model_dump() for p in body.pairs]
    return {"checkpoint_id": checkpoint.id,
            "data": results.score(settings=settings, store=store, checkpoint=checkpoint, items=items)}
