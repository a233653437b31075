"""Find jobs whose worker vanished (no heartbeat within the lease) and hand them on.

Every worker runs this periodically; the compare-and-set transitions make concurrent reapers safe.
A lost running job goes back to the queue and resumes from its last checkpoint, until it has used
`max_attempts` runs; a lost cancelling job ends cancelled, keeping its last checkpoint. The same
loop sends queued jobs that have no message in the broker (worker.outbox), so a requeue whose send
fails during a broker outage is sent once the broker is back.
"""

import logging
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy import select

from core.db import session_scope
from core.lifecycle import InvalidTransition, transition
from core.models import Job, JobStatus, utcnow
from core.notify import publish
from core.settings import Settings
from worker import outcomes
from worker.outbox import resend_lost, send, send_unsent

log = logging.getLogger(__name__)


def reap_stale_jobs(settings: Settings, app: Celery) -> list[tuple[str, str]]:
    """Requeue, fail or finish cancelling every job with an expired lease; return (job id, new status)."""
    cutoff = utcnow() - timedelta(seconds=settings.lease_seconds)
    stale = Job.heartbeat_at < cutoff
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Job.id, Job.status, Job.attempts).where(
            Job.status.in_([JobStatus.running, JobStatus.cancelling]), stale)).all()
    done: list[tuple[str, str]] = []
    for job_id, status, attempts in rows:
        target, message, error = outcomes.lease_expired(status, attempts, max_attempts=settings.max_attempts,
                                                        lease_seconds=settings.lease_seconds)
        # Requeued with its outbox mark cleared in the same commit: if the send below fails, the job
        # is still known to need one.
        requeue = {"worker_id": None, "enqueued_at": None}
        try:
            with session_scope(settings.database_url) as session:
                transition(session, job_id, target, message=message, error=error, where=(stale,),
                           values=requeue if target == JobStatus.queued else None)
        except InvalidTransition:
            continue  # it came back to life, or another reaper got there first
        if target == JobStatus.queued:
            send(settings, app, job_id, attempts)
        publish(settings.celery_broker_url, job_id)
        log.warning("job %s: %s", job_id, message)
        done.append((job_id, target.value))
    return done


def start_reaper(settings: Settings, app: Celery) -> threading.Event:
    """Run the reaper every `reaper_interval_seconds` in a daemon thread; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for step in (reap_stale_jobs, send_unsent, resend_lost):
                try:
                    step(settings, app)
                except Exception:  # a database or broker outage must not kill the thread
                    log.exception("%s failed; retrying at the next pass", step.__name__)
            stop.wait(settings.reaper_interval_seconds)

    threading.Thread(target=loop, name="job-reaper", daemon=True).start()
    return stop
