"""Job status transitions: one function, one table of allowed moves, compare-and-set in the database.

Also the lease a run holds while it trains a job, and the fence every write of that run goes through.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from core.models import TERMINAL_STATUSES, Job, JobEvent, JobStatus, utcnow

S = JobStatus
# A run's observed pace (`worker.pace`): written by its metrics while it runs, cleared by any move to another
# status (an end, a stop, a requeue), so only a running job shows one and a new run measures its own.
PACE_COLUMNS = ("steps_per_second", "tokens_per_second", "estimated_finish")
ALLOWED_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    # queued -> paused: nothing runs yet, so a pause is immediate (the queued message finds it paused).
    S.queued: frozenset({S.running, S.cancelled, S.failed, S.paused}),
    # running -> queued: a job whose worker vanished is handed to another worker.
    S.running: frozenset({S.succeeded, S.failed, S.cancelling, S.queued, S.pausing}),
    # A job that finishes before it notices the cancel request keeps its honest outcome.
    S.cancelling: frozenset({S.cancelled, S.failed, S.succeeded}),
    # Like cancelling; a cancel overrides a pause not yet done (the run stops either way, and ends cancelled).
    S.pausing: frozenset({S.paused, S.failed, S.succeeded, S.cancelling}),
    # A paused job holds no worker: a resume queues it again (it continues from its latest checkpoint).
    S.paused: frozenset({S.queued, S.cancelled}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
}


class InvalidTransition(Exception):
    def __init__(self, job_id: str, current: str | None, target: str) -> None:
        super().__init__(f"job {job_id} cannot move from {current} to {target}")
        self.job_id, self.current, self.target = job_id, current, target


def sources_of(target: JobStatus) -> list[str]:
    """Statuses from which `target` may be reached."""
    return [src.value for src, dests in ALLOWED_MOVES.items() if target in dests]


def transition(
    session: Session,
    job_id: str,
    target: JobStatus,
    *,
    message: str = "",
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    where: tuple[ColumnElement[bool], ...] = (),
) -> None:
    """Move a job to `target` if the table allows it from its current status, and record the event.

    Any move but to running clears the job's pace (`PACE_COLUMNS`).

    The update is a compare-and-set on the status (and on `where`, extra conditions the row must
    still meet), so two processes racing (a cancel request and a finishing trainer, say) cannot both
    win. Raises InvalidTransition when the move is not allowed or a condition no longer holds.
    """
    now = utcnow()
    changes: dict[str, Any] = {"status": target.value, **(values or {})}
    if target == S.running:
        changes.setdefault("started_at", now)
    else:
        changes |= dict.fromkeys(PACE_COLUMNS)
    if target in TERMINAL_STATUSES:
        changes["finished_at"] = now
    if error is not None:
        changes["error"] = error
    previous = session.scalar(select(Job.status).where(Job.id == job_id))
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources_of(target)), Job.status == previous, *where)
        .values(**changes)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        current = session.scalar(select(Job.status).where(Job.id == job_id))
        raise InvalidTransition(job_id, current, target.value)
    data: dict[str, Any] = {"status": target.value, "previous": previous}
    if error is not None:
        data["error"] = error
    session.add(
        JobEvent(
            job_id=job_id,
            type="status",
            level="error" if target == S.failed else "info",
            message=message or f"status {previous} -> {target.value}",
            data=data,
            created_at=now,
        )
    )
    session.flush()


# A run may write while its job is in one of these; any other status means the lease is over.
LEASED_STATUSES = (S.running.value, S.cancelling.value, S.pausing.value)


@dataclass(frozen=True)
class Lease:
    """A run's hold on a job: the fencing token (the job's `attempts` when it was claimed) and its worker.

    The attempt tells two runs of one worker apart (a worker that lost a job may claim it again).
    """

    job_id: str
    attempt: int
    worker_id: str

    def conditions(self) -> tuple[ColumnElement[bool], ...]:
        """What the job row meets while this lease holds it (with a status in LEASED_STATUSES)."""
        return Job.id == self.job_id, Job.attempts == self.attempt, Job.worker_id == self.worker_id


class LeaseLost(Exception):
    """The job was handed on (requeued, claimed again, or ended) since this lease was taken."""

    def __init__(self, lease: Lease) -> None:
        super().__init__(f"job {lease.job_id} is no longer held by attempt {lease.attempt} on {lease.worker_id}")
        self.lease = lease


def claim_job(session: Session, job_id: str, worker_id: str, *, message: str = "") -> Lease:
    """Move a queued job to running under a new lease (attempt + 1); raises InvalidTransition."""
    transition(session, job_id, S.running, message=message or f"started on {worker_id}",
               values={"worker_id": worker_id, "heartbeat_at": utcnow(), "attempts": Job.attempts + 1})
    # The row is ours until the commit (row lock on Postgres, write lock on SQLite): this is our attempt.
    return Lease(job_id, session.scalar(select(Job.attempts).where(Job.id == job_id)), worker_id)


def hold(session: Session, lease: Lease, **values: Any) -> None:
    """Fence a write: run first in each transaction a run writes in; raises LeaseLost if the lease moved on.

    The guard is an UPDATE of the job row under the lease's conditions: it takes the row lock on
    Postgres and the write lock on SQLite, so nobody can requeue or reclaim the job until this
    transaction ends, and a refused write rolls back with it. `values` are written by the same
    statement (the step counter, a heartbeat).
    """
    result = session.execute(
        update(Job)
        .where(*lease.conditions(), Job.status.in_(LEASED_STATUSES))
        .values(**(values or {"worker_id": Job.worker_id}))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        raise LeaseLost(lease)


def leased_status(session: Session, lease: Lease) -> JobStatus:
    """The job's status while `lease` holds it (a read, for polling); raises LeaseLost otherwise."""
    status = session.scalar(select(Job.status).where(*lease.conditions(), Job.status.in_(LEASED_STATUSES)))
    if status is None:
        raise LeaseLost(lease)
    return JobStatus(status)
