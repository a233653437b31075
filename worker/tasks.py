"""`run_job(job_id)`: claim the job, train it in a child process, keep its lease alive.

The task asserts the world from the database: a message for a job that is no longer queued (done,
cancelled, or claimed by a live worker) is a no-op, so redelivery is harmless.
"""

import logging
import os
import socket

from sqlalchemy.exc import OperationalError

from core.db import session_scope
from core.lifecycle import InvalidTransition, Lease, LeaseLost, claim_job, hold, transition
from core.models import utcnow
from core.notify import publish
from core.queue import RUN_JOB_TASK
from core.settings import get_settings
from worker import outcomes
from worker.celery_app import app
from worker.launcher import TrainingProcess
from worker.runner import LEASE_LOST_EXIT

log = logging.getLogger(__name__)
STDERR_TAIL = 2000


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(url: str, job_id: str, worker_id: str) -> Lease | None:
    """Move a queued job to running under a new lease; None if someone else has it or it is over."""
    try:
        with session_scope(url) as session:
            lease = claim_job(session, job_id, worker_id)
    except InvalidTransition as exc:
        log.info("job %s not claimed: %s", job_id, exc)
        return None
    publish(get_settings().celery_broker_url, job_id)
    return lease


def heartbeat(url: str, lease: Lease) -> bool:
    """Renew the lease; False once the job was handed on. An unreachable database only costs this beat."""
    try:
        with session_scope(url) as session:
            hold(session, lease, heartbeat_at=utcnow())
    except LeaseLost as exc:
        log.warning("heartbeat refused: %s", exc)
        return False
    except OperationalError as exc:
        log.warning("heartbeat of %s failed: %s", lease.job_id, exc.orig)
    return True


def fail_if_unfinished(url: str, lease: Lease, message: str) -> None:
    """The child died without recording an outcome: record it for it, if the lease still holds the job."""
    try:
        with session_scope(url) as session:
            hold(session, lease)  # ended, or handed on: not this run's failure to record
            status, message, error = outcomes.internal_failure(message)
            transition(session, lease.job_id, status, message=message, error=error, where=lease.conditions())
    except LeaseLost:
        log.info("job %s: no failure recorded, the run's lease is over", lease.job_id)
        return
    except InvalidTransition:
        log.warning("job %s changed status while recording its failure", lease.job_id)
        return
    publish(get_settings().celery_broker_url, lease.job_id)


@app.task(name=RUN_JOB_TASK, acks_late=True)
def run_job(job_id: str) -> None:
    """Train one job to its end; the child process records metrics, checkpoints and the outcome."""
    settings = get_settings()
    url, worker_id = settings.database_url, worker_identity()
    lease = claim(url, job_id, worker_id)
    if lease is None:
        return
    # A child per job keeps CUDA and the model out of the long-lived worker process, and makes
    # crash and memory failures the child's alone; it is forked warm (worker.launcher).
    with TrainingProcess(["worker.runner", job_id, worker_id, str(lease.attempt)]) as child:
        while (code := child.wait(settings.heartbeat_seconds)) is None:
            heartbeat(url, lease)
        tail = child.stderr_tail(STDERR_TAIL)
    if code == LEASE_LOST_EXIT:
        log.warning("training process for %s stopped: it lost its lease, the job was handed on", job_id)
    elif code != 0:
        log.error("training process for %s exited with %s:\n%s", job_id, code, tail)
        fail_if_unfinished(url, lease, outcomes.exit_message(code, tail))
