"""Trainer callbacks that write to the database and the artifact store (run in the child process).

Every write is fenced by the run's lease (`core.lifecycle.hold`): once the job was handed on, each
one raises LeaseLost, which ends the trainer's loop, since no callback swallows it.
"""

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.artifacts import Store, tar_digest
from core.db import retry_on_outage, session_scope
from core.lifecycle import Lease, LeaseLost, hold, leased_status
from core.model_refs import MODEL_SUBDIR
from core.models import Checkpoint, JobEvent, JobStatus, Metric, new_id, utcnow
from core.notify import publish
from trainers.spec.callbacks import Callbacks

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
    """Batches metrics, stores checkpoints, records events and reads the stop request, under `lease`.

    Every database touch retries through an outage of up to `grace_seconds`, so a database
    restart pauses training instead of failing it; a write after an outage longer than the lease
    is refused like any other write of a run whose job was handed on.
    """

    def __init__(self, *, url: str, lease: Lease, store: Store, broker_url: str = "",
                 grace_seconds: float = 300.0) -> None:
        self.url, self.lease, self.store, self.broker_url = url, lease, store, broker_url
        self.job_id = lease.job_id
        self.grace_seconds = grace_seconds
        self._pending: dict[int, dict[str, float]] = {}
        self._last_flush = time.monotonic()

    def _db(self, work: Callable[[Session], T], what: str) -> T:
        def attempt() -> T:
            with session_scope(self.url) as session:
                return work(session)

        return retry_on_outage(attempt, grace_seconds=self.grace_seconds, what=what)

    def _write(self, work: Callable[[Session], T], what: str, **job_values: Any) -> T:
        """Run `work` in a transaction that first fences on the lease (writing `job_values` to the job)."""
        def fenced(session: Session) -> T:
            hold(session, self.lease, **job_values)
            return work(session)

        return self._db(fenced, what)

    def on_start(self, total_steps: int) -> None:
        self._write(lambda s: None, "recording the total steps", total_steps=total_steps)
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

        self._write(lambda s: upsert_metrics(s, self.job_id, rows), "writing metrics", current_step=rows[-1][0])
        self._pending.clear()
        publish(self.broker_url, self.job_id)

    def checkpoint_key(self, step: int) -> str:
        """Where this run stores its checkpoint of `step`: a key of its own attempt, so the files of a
        run that lost its lease never land on those of the job's next attempt."""
        return f"jobs/{self.job_id}/attempt-{self.lease.attempt}/checkpoint-{step:08d}"

    def on_checkpoint(self, step: int, save: Callable[[Path], None], info: dict[str, Any]) -> None:
        self.flush()
        staging = self.store.staging_dir()
        try:
            save(staging)
            checkpoint_id = new_id("ckpt")
            size, sha256 = tar_digest(staging / MODEL_SUBDIR, checkpoint_id)
            key = self.checkpoint_key(step)
            self.store.commit(staging, key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone after a commit; left over after a failure

        def record(session: Session) -> str | None:
            # A resumed run may save a step again: the newer files replace the older row.
            old = session.scalar(select(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.step == step))
            replaced = None
            if old is not None:
                replaced = old.artifact_key
                session.delete(old)
                session.flush()
            session.add(Checkpoint(id=checkpoint_id, job_id=self.job_id, step=step, artifact_key=key,
                                   size_bytes=size, sha256=sha256, metrics=info.get("metrics", {}),
                                   probe=info.get("probe"), model_info=info.get("model")))
            session.add(JobEvent(job_id=self.job_id, type="checkpoint", message=f"checkpoint at step {step}",
                                 data={"checkpoint_id": checkpoint_id, "step": step}))
            return replaced

        try:
            replaced = self._write(record, "recording a checkpoint")
        except LeaseLost:
            # Files under this attempt's own key that no row names: no one else's, and no one's now.
            if not self._db(lambda s: s.scalar(select(Checkpoint.id).where(Checkpoint.artifact_key == key)),
                            "looking up a checkpoint's files"):
                self.store.delete(key)
            raise
        if replaced is not None and replaced != key:
            self.store.delete(replaced)  # an earlier attempt's files of this step, now unreferenced
        publish(self.broker_url, self.job_id)

    def should_stop(self) -> bool:
        """Stop when the job is being cancelled or paused; raises LeaseLost when it was handed on (stop at once)."""
        status = self._db(lambda s: leased_status(s, self.lease), "reading the job's status")
        return status != JobStatus.running

    def on_event(self, level: str, message: str) -> None:
        self._write(lambda s: s.add(JobEvent(job_id=self.job_id, type="event", level=level, message=message)),
                    "recording an event")
        publish(self.broker_url, self.job_id)

    def latest_checkpoint(self) -> Checkpoint | None:
        return self._db(lambda s: s.scalar(select(Checkpoint).where(Checkpoint.job_id == self.job_id)
                                           .order_by(Checkpoint.step.desc()).limit(1)), "finding the last checkpoint")

    def mark_final(self, step: int) -> None:
        self._write(lambda s: s.execute(update(Checkpoint).where(Checkpoint.job_id == self.job_id)
                                        .values(is_final=Checkpoint.step == step)), "marking the final checkpoint")
