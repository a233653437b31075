"""What a job produced: metrics, samples, events and checkpoints, and checkpoint archives."""

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import InvalidRequest
from api.services import modelops
from api.services.paging import ascending_page
from core.artifacts import Store, tar_digest
from core.model_refs import MODEL_SUBDIR
from core.models import Checkpoint, Job, JobEvent, JobSample, Metric
from core.settings import Settings
from trainers.spec.errors import UserError
from trainers.spec.score_items import score_rows


def metrics_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[Metric], bool]:
    """Metrics by step; `after` is a step."""
    stmt = select(Metric).where(Metric.job_id == job.id)
    return ascending_page(session, stmt, Metric.step, limit=limit, after=after)


def samples_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[JobSample], bool]:
    """Samples (a few completions of a PPO/GRPO rollout) by step; `after` is a step."""
    stmt = select(JobSample).where(JobSample.job_id == job.id)
    return ascending_page(session, stmt, JobSample.step, limit=limit, after=after)


def events_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[JobEvent], bool]:
    """Events in order; `after` is an event id."""
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    return ascending_page(session, stmt, JobEvent.id, limit=limit, after=after)


def checkpoints_page(*, session: Session, job: Job, limit: int, after: str | None) -> tuple[list[Checkpoint], bool]:
    """Checkpoints by step; `after` is a step."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    return ascending_page(session, stmt, Checkpoint.step, limit=limit, after=after)


MERGED_SUBDIR = "merged"


def is_adapter(checkpoint: Checkpoint) -> bool:
    return bool((checkpoint.model_info or {}).get("adapter"))


def archive(*, store: Store, checkpoint: Checkpoint) -> tuple[Iterator[bytes], int, str]:
    """The checkpoint's model directory as a tar stream, with its size and sha256."""
    frames = store.tar(f"{checkpoint.artifact_key}/{MODEL_SUBDIR}", checkpoint.id)
    return frames, checkpoint.size_bytes, checkpoint.sha256


def merged_archive(*, session: Session, settings: Settings, store: Store, ops: modelops.ModelOps,
                   checkpoint: Checkpoint) -> tuple[Iterator[bytes], int, str]:
    """A LoRA checkpoint's base + adapter as one model: merged on first request, then kept."""
    if not is_adapter(checkpoint):
        return archive(store=store, checkpoint=checkpoint)  # already a full model
    root_name = f"{checkpoint.id}-merged"
    merged_key = f"{checkpoint.artifact_key}/{MERGED_SUBDIR}"
    if checkpoint.merged_sha256 is None or not store.exists(merged_key):
        staging = store.staging_dir()
        modelops.merge(ops, store.local_dir(f"{checkpoint.artifact_key}/{MODEL_SUBDIR}"), staging,
                       timeout=settings.model_ops_timeout_seconds)
        size, sha256 = tar_digest(staging, root_name)
        store.commit(staging, merged_key)
        checkpoint.merged_size_bytes, checkpoint.merged_sha256 = size, sha256
        session.commit()
    return store.tar(merged_key, root_name), checkpoint.merged_size_bytes, checkpoint.merged_sha256


def score(*, settings: Settings, store: Store, ops: modelops.ModelOps, checkpoint: Checkpoint,
          items: list[dict[str, Any]], field: str) -> list[dict[str, float]]:
    """Score texts or prompt/response pairs (the request's `field`) with a reward-model checkpoint."""
    # Everything that can be refused without the model is refused here, before the model process wakes.
    if (checkpoint.model_info or {}).get("kind") != "reward_model":
        raise InvalidRequest(f"checkpoint {checkpoint.id} is not a reward model", param="checkpoint_id")
    try:
        score_rows(items)
    except UserError as exc:
        param = (exc.param or "items").replace("items", field, 1).removesuffix(".text")
        raise InvalidRequest(exc.message.replace(exc.param or "items", param, 1), param=param) from exc
    return modelops.score(ops, store.local_dir(f"{checkpoint.artifact_key}/{MODEL_SUBDIR}"), items,
                          timeout=settings.model_ops_timeout_seconds)
