"""Database rows the core tests build on."""

from sqlalchemy.orm import Session

from core.models import Checkpoint, Job, Project


def add_checkpoint(session: Session, *, project_id: str = "proj_1", job_id: str = "job_1",
                   checkpoint_id: str = "ckpt_1", step: int = 3) -> None:
    """A project with a DPO job and one checkpoint of it, stored under `jobs/<job>/checkpoint-<step>`."""
    session.add(Project(id=project_id, name="p"))
    session.flush()
    session.add(Job(id=job_id, project_id=project_id, type="dpo", base_model="m", dataset_id="d", hyperparameters={}))
    session.flush()
    session.add(Checkpoint(id=checkpoint_id, job_id=job_id, step=step, artifact_key=f"jobs/{job_id}/checkpoint-{step}",
                           size_bytes=1, sha256="0" * 64, metrics={}))
