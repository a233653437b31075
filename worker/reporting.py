"""Trainer callbacks that write to the database and the artifact store (run in the child process).

Every write is fenced by the run's lease (`core.lifecycle.hold`): once the job was handed on, each
one raises LeaseLost, which ends the trainer's loop, since no callback swallows it. Each metrics
write also records the run's pace (`worker.pace`: steps and tokens per second and the estimated
finish, measured on this process's clock from the steps this run reported), while the job is
running; `core.lifecycle.transition` clears them when the run ends or stops.
"""

import math
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import case, literal, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.artifacts import Store, tar_digest
from core.db import retry_on_outage, session_scope
from core.lifecycle import Lease, LeaseLost, hold, leased_status
from core.model_refs import MODEL_SUBDIR
from core.models import Checkpoint, Job, JobEvent, JobSample, JobStatus, Metric, new_id, utcnow
from core.notify import publish
from trainers.spec.callbacks import Callbacks
from trainers.spec.results import NUM_TOKENS_METRIC
from worker.pace import Pace

T = TypeVar("T")
FLUSH_SECONDS = 1.0
FLUSH_ROWS = 50


def _dialect(session: Session) -> Any:
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite


def upsert_metrics(session: Session, job_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
    """Insert metrics rows, replacing an existing (job, step): a resumed run never duplicates a step."""
    now = utcnow()
    stmt = _dialect(session).insert(Metric).values(
        [{"job_id": job_id, "step": step, "values": values, "created_at": now} for step, values in rows])
    stmt = stmt.on_conflict_do_update(index_elements=["job_id", "step"],
                                      set_={"values": stmt.excluded["values"], "created_at": now})
    session.execute(stmt)


def storable(value: Any) -> Any:
    """A JSON value as both backends store it: NUL characters (which Postgres refuses in text) as U+FFFD,
    numbers that are not finite (which JSON cannot hold) as null."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def upsert_samples(session: Session, job_id: str, step: int, rows: list[dict[str, Any]]) -> None:
    """Insert a step's samples, replacing those of an existing (job, step): a resumed run never duplicates a step."""
    now = utcnow()
    stmt = _dialect(session).insert(JobSample).values(job_id=job_id, step=step, rows=rows, created_at=now)
    stmt = stmt.on_conflict_do_update(index_elements=["job_id", "step"],
                                      set_={"rows": stmt.excluded["rows"], "created_at": now})
    session.execute(stmt)


class JobReporter(Callbacks):
    """Batches metrics, stores samples and checkpoints, records events and the run's pace, and reads the stop
    request, under `lease`.

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
        self.total_steps: int | None = None
        self.pace = Pace()

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
        self.total_steps = total_steps
        self.pace.reset()  # the run's pace is measured from its own first step
        self._write(lambda s: None, "recording the total steps", total_steps=total_steps)
        publish(self.broker_url, self.job_id)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._pending[step] = {k: float(v) for k, v in metrics.items()}
        self.pace.observe(time.monotonic(), step, self._pending[step].get(NUM_TOKENS_METRIC))
        if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics, the job's step counter and the run's pace in one transaction."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        rows = sorted(self._pending.items())

        self._write(lambda s: upsert_metrics(s, self.job_id, rows), "writing metrics", current_step=rows[-1][0],
                    **self._pace_values())
        self._pending.clear()
        publish(self.broker_url, self.job_id)

    def _pace_values(self) -> dict[str, Any]:
        """The job's pace columns as the run measures them now, written only while the job is running (a
        cancelling or pausing run is about to stop: its columns stay cleared)."""
        estimate = self.pace.estimate(time.monotonic(), self.total_steps)
        values: dict[str, Any] = {"steps_per_second": None, "tokens_per_second": None, "estimated_finish": None}
        if estimate is not None:
            values["steps_per_second"] = estimate.steps_per_second
            values["tokens_per_second"] = estimate.tokens_per_second
            if estimate.seconds_left is not None:
                values["estimated_finish"] = utcnow() + timedelta(seconds=estimate.seconds_left)
        running = Job.status == JobStatus.running.value
        return {name: null() if value is None else case((running, literal(value, getattr(Job, name).type)),
                                                        else_=null())
                for name, value in values.items()}  # fmt: skip

    def on_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Store a rollout's samples (replacing a step's earlier ones), after the metrics reported before them."""
        self.flush()  # a stream sends what was written in the order it was written
        stored = storable(rows)
        self._write(lambda s: upsert_samples(s, self.job_id, step, stored), "writing samples")
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
