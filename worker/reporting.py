"""Trainer callbacks that write to the database and the artifact store (run in the child process)."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.artifacts import ArtifactStore, tar_digest
from core.db import retry_on_outage, session_scope
from core.model_refs import MODEL_SUBDIR
from core.models import Checkpoint, Job, JobEvent, JobStatus, Metric, new_id, utcnow
from core.notify import publish
from trainers.callbacks import Callbacks

T = TypeVar("T")
FLUSH_SECONDS = 1.0
FLUSH_ROWS = 50


def upsert_metrics(session: Session, job_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Insert metrics rows, replacing an existing (job, step): a resumed run never duplicates a step."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    now = utcnow()
    stmt = dialect.insert(Metric).values(
        [{"job_id": job_id, "step": step, "values": values, "created_at": now} for step, values in rows])
    stmt = stmt.on_conflict_do_update(index_elements=["job_id", "step"],
                                      set_={"values": stmt.excluded["values"], "created_at": now})
    session.execute(stmt)


class JobReporter(Callbacks):
    """Batches metrics, stores checkpoints, records events and reads the cancel flag.

    Every database touch retries through an outage of up to `grace_seconds`, so a database
    restart pauses training instead of failing it.
    """

    def __init__(self, *, url: str, job_id: str, store: ArtifactStore, broker_url: str = "",
                 worker_id: str | None = None, grace_seconds: float = 300.0) -> None:
        self.url, self.job_id, self.store, self.broker_url = url, job_id, store, broker_url
        self.worker_id = worker_id  # the lease holder this run belongs to, if any
        self.grace_seconds = grace_seconds
        self._pending: dict[int, dict[str, float]] = {}
        self._last_flush = time.monotonic()

    def _db(self, work: Callable[[Session], T], what: str) -> T:
        def attempt() -> T:
            with session_scope(self.url) as session:
                return work(session)

        return retry_on_outage(attempt, grace_seconds=self.grace_seconds, what=what)

    def on_start(self, total_steps: int) -> None:
        self._db(lambda s: s.execute(update(Job).where(Job.id == self.job_id).values(total_steps=total_steps)),
                 "recording the total steps")
        publish(self.broker_url, self.job_id)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._pending[step] = {k: float(v) for k, v in metrics.items()}
        if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics and the job's step counter in one transaction."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        rows = sorted(self._pending.items())

        def write(session: Session) -> None:
            upsert_metrics(session, self.job_id, rows)
            session.execute(update(Job).where(Job.id == self.job_id).values(current_step=rows[-1][0]))

        self._db(write, "writing metrics")
        self._pending.clear()
        publish(self.broker_url, self.job_id)

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict[str, Any]) -> None:
        self.flush()
        staging = self.store.staging_dir()
        save(staging)
        checkpoint_id = new_id("ckpt")
        size, sha256 = tar_digest(staging / MODEL_SUBDIR, checkpoint_id)
        key = f"jobs/{self.job_id}/checkpoint-{step:08d}"
        self.store.commit(staging, key)

        def record(session: Session) -> None:
            # A resumed run may save a step again: the newer files replace the older row.
            old = session.scalar(select(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.step == step))
            if old is not None:
                session.delete(old)
                session.flush()
            session.add(Checkpoint(id=checkpoint_id, job_id=self.job_id, step=step, artifact_key=key,
                                   size_bytes=size, sha256=sha256, metrics=info.get("metrics", {}),
                                   probe=info.get("probe"), model_info=info.get("model")))
            session.add(JobEvent(job_id=self.job_id, type="checkpoint", message=f"checkpoint at step {step}",
                                 data={"checkpoint_id": checkpoint_id, "step": step}))

        self._db(record, "recording a checkpoint")
        publish(self.broker_url, self.job_id)

    def should_stop(self) -> bool:
        """Stop when the job is no longer running under this run's lease (cancelled, or handed on)."""
        def read(session: Session) -> tuple[str, str | None]:
            return session.execute(select(Job.status, Job.worker_id).where(Job.id == self.job_id)).one()

        status, holder = self._db(read, "reading the job's status")
        return status != JobStatus.running or (self.worker_id is not None and holder != self.worker_id)

    def on_event(self, level: str, message: str) -> None:
        self._db(lambda s: s.add(JobEvent(job_id=self.job_id, type="event", level=level, message=message)),
                 "recording an event")
        publish(self.broker_url, self.job_id)

    def latest_checkpoint(self) -> Checkpoint | None:
        return self._db(lambda s: s.scalar(select(Checkpoint).where(Checkpoint.job_id == self.job_id)
                                           .order_by(Checkpoint.step.desc()).limit(1)), "finding the last checkpoint")

    def mark_final(self, step: int) -> None:
        self._db(lambda s: s.execute(update(Checkpoint).where(Checkpoint.job_id == self.job_id)
                                     .values(is_final=Checkpoint.step == step)), "marking the final checkpoint")
