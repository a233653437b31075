"""Find jobs whose worker vanished (no heartbeat within the lease) and hand them on.

Every worker runs this periodically; the compare-and-set transitions make concurrent reapers safe.
A lost running job goes back to the queue and resumes from its last checkpoint, until it has used
`max_attempts` runs (those after a resume do not count); a lost cancelling job ends cancelled, and a
lost pausing job paused, keeping its last checkpoint (a paused job holds no lease: it is never reaped). The same
loop sends queued jobs that have no message in the broker (worker.outbox), so a requeue whose send
fails during a broker outage is sent once the broker is back.
"""

import logging
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy import func, select

from core.db import session_scope
from core.lifecycle import InvalidTransition, transition
from core.models import Job, JobEvent, JobStatus, utcnow
from core.notify import publish
from core.settings import Settings
from worker import outcomes
from worker.outbox import resend_lost, send, send_unsent

log = logging.getLogger(__name__)


def reap_stale_jobs(settings: Settings, app: Celery) -> list[tuple[str, str]]:
    """Requeue, fail, or finish cancelling or pausing every job with an expired lease; return (job id, new status)."""
    cutoff = utcnow() - timedelta(seconds=settings.lease_seconds)
    stale = Job.heartbeat_at < cutoff
    # Runs that followed a resume were not given for a lost worker: they do not count against max_attempts.
    resumes = (select(func.count(JobEvent.id)).where(
        JobEvent.job_id == Job.id, JobEvent.type == "status",
        JobEvent.data["previous"].as_string() == JobStatus.paused.value,
        JobEvent.data["status"].as_string() == JobStatus.queued.value).scalar_subquery())
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Job.id, Job.status, Job.attempts, resumes).where(
            Job.status.in_([JobStatus.running, JobStatus.cancelling, JobStatus.pausing]), stale)).all()
    done: list[tuple[str, str]] = []
    for job_id, status, attempts, resumed in rows:
        target, message, error = outcomes.lease_expired(status, attempts - resumed, max_attempts=settings.max_attempts,
                                                        lease_seconds=settings.lease_seconds)
        # Requeued with its outbox mark cleared in the same commit: if the send below fails, the job
        # is still known to need one. A paused job holds no worker either.
        values = {"worker_id": None, "enqueued_at": None} if target == JobStatus.queued else None
        if target == JobStatus.paused:
            values = {"worker_id": None}
        try:
            with session_scope(settings.database_url) as session:
                transition(session, job_id, target, message=message, error=error, where=(stale,), values=values)
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
