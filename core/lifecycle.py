"""Job status transitions: one function, one table of allowed moves, compare-and-set in the database."""

from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from core.models import TERMINAL_STATUSES, Job, JobEvent, JobStatus, utcnow

S = JobStatus
ALLOWED_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    S.queued: frozenset({S.running, S.cancelled, S.failed}),
    # running -> queued: a job whose worker vanished is handed to another worker.
    S.running: frozenset({S.succeeded, S.failed, S.cancelling, S.queued}),
    # A job that finishes before it notices the cancel request keeps its honest outcome.
    S.cancelling: frozenset({S.cancelled, S.failed, S.succeeded}),
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

    The update is a compare-and-set on the status (and on `where`, extra conditions the row must
    still meet), so two processes racing (a cancel request and a finishing trainer, say) cannot both
    win. Raises InvalidTransition when the move is not allowed or a condition no longer holds.
    """
    now = utcnow()
    changes: dict[str, Any] = {"status": target.value, **(values or {})}
    if target == S.running:
        changes.setdefault("started_at", now)
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
