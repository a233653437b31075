"""Checkpoints: read and download."""

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from api.deps import CheckpointDep, StoreDep
from api.schemas import CheckpointPublic
from api.services import results

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])


@router.get("/{checkpoint_id}", response_model=CheckpointPublic)
def get_checkpoint(checkpoint: CheckpointDep):
    """Read one checkpoint."""
    return checkpoint


@router.get("/{checkpoint_id}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-tar": {}},
                             "description": "tar of a save_pretrained directory"}})
def download_checkpoint(checkpoint: CheckpointDep, store: StoreDep):
    """Stream the checkpoint as a tar archive (model weights, config, tokenizer)."""
    return StreamingResponse(
        results.archive(store=store, checkpoint=checkpoint),
        media_type="application/x-tar",
        headers={"Content-Length": str(checkpoint.size_bytes), "ETag": f'"{checkpoint.sha256}"',
                 "Content-Disposition": f'attachment; filename="{checkpoint.id}.tar"'},
    )
