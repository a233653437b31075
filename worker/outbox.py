"""Reliable enqueueing: send every queued job that has no message in the broker.

`jobs.enqueued_at` is the outbox. Every move to `queued` commits it as NULL (nothing sent yet), and
whoever sends the message marks it afterwards (`core.queue.mark_enqueued`). A send that fails (the
broker is down) leaves NULL behind, and the reaper loop of every worker sends it again here. Marks
older than `resend_after_seconds` are checked against the broker, for messages the broker itself
lost (Redis restarted without persistence, say). Re-sending is harmless: the message id is the same
for an attempt, and `run_job` claims the job, so a duplicate finds it taken and does nothing.
"""

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import func, select

from core.db import session_scope
from core.models import Job, JobEvent, JobStatus, utcnow
from core.queue import enqueue_job, jobs_in_broker, mark_enqueued
from core.settings import Settings

log = logging.getLogger(__name__)


def send(settings: Settings, app: Celery, job_id: str, attempt: int) -> bool:
    """Send the job's message for `attempt` and mark it sent; False (logged) when the broker refused it."""
    try:
        enqueue_job(app, job_id, attempt=attempt)
    except Exception as exc:  # the broker is away: the outbox row keeps the job to be sent later
        log.warning("could not send job %s (attempt %d) to the broker: %s", job_id, attempt, exc)
        return False
    with session_scope(settings.database_url) as session:
        mark_enqueued(session, job_id, attempt=attempt)
    return True


def send_unsent(settings: Settings, app: Celery) -> list[str]:
    """Send the queued jobs never marked as sent, once their own sender has had its grace; return them."""
    cutoff = utcnow() - timedelta(seconds=settings.unsent_grace_seconds)
    # When the job last became queued: its latest status event (a requeue), else its creation.
    queued_at = (select(func.max(JobEvent.created_at))
                 .where(JobEvent.job_id == Job.id, JobEvent.type == "status").scalar_subquery())
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Job.id, Job.attempts).where(
            Job.status == JobStatus.queued, Job.enqueued_at.is_(None),
            func.coalesce(queued_at, Job.created_at) <= cutoff).order_by(Job.created_at)).all()
    sent = []
    for job_id, attempt in rows:
        if not send(settings, app, job_id, attempt):
            break  # the broker is down: the rest would fail the same way; the next pass retries
        log.info("job %s: sent its message for attempt %d, which was never sent", job_id, attempt)
        sent.append(job_id)
    return sent


def resend_lost(settings: Settings, app: Celery) -> list[str]:
    """Re-send the queued jobs whose message the broker no longer holds; return them.

    Looks only at jobs sent over `resend_after_seconds` ago; one whose message is still in the
    broker is marked again, so the next look at it is a full period away.
    """
    cutoff = utcnow() - timedelta(seconds=settings.resend_after_seconds)
    with session_scope(settings.database_url) as session:
        rows = session.execute(select(Job.id, Job.attempts).where(
            Job.status == JobStatus.queued, Job.enqueued_at <= cutoff).order_by(Job.created_at)).all()
    if not rows:
        return []
    live = jobs_in_broker(app, delivered_within=settings.resend_after_seconds)
    resent = []
    for job_id, attempt in rows:
        if job_id in live:
            with session_scope(settings.database_url) as session:
                mark_enqueued(session, job_id, attempt=attempt)
            continue
        if not send(settings, app, job_id, attempt):
            break
        log.warning("job %s: its message was no longer in the broker; sent it again", job_id)
        resent.append(job_id)
    return resent
