"""`run_job(job_id)`: claim the job, train it in a child process, keep its lease alive.

The task asserts the world from the database: a message for a job that is no longer queued (done,
cancelled, or claimed by a live worker) is a no-op, so redelivery is harmless.
"""

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile

from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core.db import session_scope
from core.lifecycle import InvalidTransition, transition
from core.models import TERMINAL_STATUSES, Job, JobStatus, utcnow
from core.notify import publish
from core.queue import RUN_JOB_TASK
from core.settings import get_settings
from worker.celery_app import app

log = logging.getLogger(__name__)
STDERR_TAIL = 2000
PR_SET_PDEATHSIG = 1


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(url: str, job_id: str, worker_id: str) -> bool:
    """Move a queued job to running under our lease; False if someone else has it or it is over."""
    try:
        with session_scope(url) as session:
            transition(session, job_id, JobStatus.running, message=f"started on {worker_id}",
                       values={"worker_id": worker_id, "heartbeat_at": utcnow(),
                               "attempts": Job.attempts + 1})
    except InvalidTransition as exc:
        log.info("job %s not claimed: %s", job_id, exc)
        return False
    publish(get_settings().celery_broker_url, job_id)
    return True


def heartbeat(url: str, job_id: str, worker_id: str) -> None:
    """Renew the job's lease; an unreachable database only costs this beat (the lease is longer)."""
    try:
        with session_scope(url) as session:
            session.execute(update(Job).where(Job.id == job_id, Job.worker_id == worker_id)
                            .values(heartbeat_at=utcnow()))
    except OperationalError as exc:
        log.warning("heartbeat of %s failed: %s", job_id, exc.orig)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when this worker process dies (Linux)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def fail_if_unfinished(url: str, job_id: str, message: str) -> None:
    """The child died without recording an outcome: record it for it."""
    with session_scope(url) as session:
        job = session.get(Job, job_id)
        if job is None or job.status in TERMINAL_STATUSES:
            return
        try:
            transition(session, job_id, JobStatus.failed, message=message,
                       error={"type": "internal_error", "message": message})
        except InvalidTransition:
            log.warning("job %s changed status while recording its failure", job_id)
            return
    publish(get_settings().celery_broker_url, job_id)


@app.task(name=RUN_JOB_TASK, acks_late=True)
def run_job(job_id: str) -> None:
    """Train one job to its end; the child process records metrics, checkpoints and the outcome."""
    settings = get_settings()
    url, worker_id = settings.database_url, worker_identity()
    if not claim(url, job_id, worker_id):
        return
    with tempfile.TemporaryFile() as stderr:
        # A child per job keeps CUDA and the model out of the long-lived worker process, and makes
        # crash and memory failures the child's alone.
        child = subprocess.Popen([sys.executable, "-m", "worker.runner", job_id, worker_id], stderr=stderr,
                                 preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        while True:
            try:
                code = child.wait(timeout=settings.heartbeat_seconds)
                break
            except subprocess.TimeoutExpired:
                heartbeat(url, job_id, worker_id)
        stderr.seek(0)
        tail = stderr.read().decode(errors="replace")[-STDERR_TAIL:]
    if code != 0:
        log.error("training process for %s exited with %s:\n%s", job_id, code, tail)
        last_line = tail.strip().splitlines()[-1] if tail.strip() else ""
        fail_if_unfinished(url, job_id, f"the training process exited with code {code}"
                           + (f": {last_line}" if last_line else ""))
