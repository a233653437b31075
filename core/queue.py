"""The Celery application, configured from settings; the API uses it only to send tasks by name.

Also the two halves of reliable enqueueing: `mark_enqueued` records in the job row that the broker
accepted its message (`jobs.enqueued_at`, the outbox), and `jobs_in_broker` tells which jobs still
have a message there.
"""

import json
import time

import redis
from celery import Celery
from kombu import Queue
from sqlalchemy import inspect, text, update
from sqlalchemy.orm import Session

from core.db import engine_for
from core.models import Job, JobStatus, utcnow
from core.settings import Settings

RUN_JOB_TASK = "worker.run_job"


def _transport_options(url: str) -> dict:
    if url.startswith("sqla+"):
        # kombu hands these to create_engine: wait for SQLite's lock instead of failing at once.
        return {"connect_args": {"timeout": 30}} if "sqlite" in url else {}
    # A message not acked within a day (the worker died mid-job) goes back to the queue.
    return {"visibility_timeout": 3600 * 24}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`: explicit queue, late acks, one message at a time, no result backend."""
    app = Celery("rlhf_service", broker=settings.celery_broker_url)
    app.conf.update(
        task_queues=[Queue(settings.training_queue)],
        task_default_queue=settings.training_queue,
        task_routes={RUN_JOB_TASK: {"queue": settings.training_queue}},
        # run_job is idempotent (it claims the job before doing anything), so late acks are safe and
        # a message whose worker died is delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings.celery_broker_url),
        worker_hijack_root_logger=False,
    )
    return app


def task_id(job_id: str, attempt: int = 0) -> str:
    """Message id of a job's run: the job id, with the attempt number after a requeue."""
    return job_id if attempt == 0 else f"{job_id}-{attempt}"


def enqueue_job(app: Celery, job_id: str, *, attempt: int = 0) -> None:
    """Send the job to its queue; call only after the job row is committed."""
    app.send_task(RUN_JOB_TASK, args=[job_id], task_id=task_id(job_id, attempt), retry=True,
                  retry_policy={"max_retries": 2})


def mark_enqueued(session: Session, job_id: str, *, attempt: int) -> bool:
    """Record that the broker holds the message of the job's `attempt`, if the job still waits for it.

    Guarded by status and attempt, so a late mark never lands on a job that has been claimed (or
    lost and requeued for a later attempt) since the send.
    """
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.queued, Job.attempts == attempt)
        .values(enqueued_at=utcnow()).execution_options(synchronize_session=False))
    return result.rowcount == 1


def _job_of(raw: bytes | str | dict) -> str:
    """The job a run_job message is for, from its id (`task_id`: the job id, maybe `-<attempt>`)."""
    message = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    message_id = message.get("headers", {}).get("id", "")
    head, dash, tail = message_id.rpartition("-")
    return head if dash and tail.isdigit() else message_id


def _is_for(job_id: str, raw: bytes | str) -> bool:
    return _job_of(raw) == job_id


def _waiting_sqla(url: str, queue: str) -> list:
    """(id, payload) of the messages waiting in `queue` of kombu's SQLAlchemy transport."""
    engine = engine_for(url.removeprefix("sqla+"))
    if not inspect(engine).has_table("kombu_message"):
        return []  # kombu creates its tables with the first message
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT m.id, m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
            "WHERE q.name = :queue AND m.visible"), {"queue": queue}).all()


def jobs_in_broker(app: Celery, *, delivered_within: float) -> set[str]:
    """Ids of the jobs that have a live message in the broker: waiting in the queue, or (Redis) taken
    by a worker less than `delivered_within` seconds ago and not yet acknowledged.

    A message taken by a worker is claimed within moments; one held longer while its job is still
    queued belongs to a worker that died before claiming, and Redis gives it back only after the
    visibility timeout (a day). kombu's SQLAlchemy transport drops a message once it is delivered.
    """
    url, queue = app.conf.broker_url, app.conf.task_default_queue
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            jobs = {_job_of(raw) for raw in client.lrange(queue, 0, -1)}
            fresh = client.zrange("unacked_index", time.time() - delivered_within, "+inf", byscore=True)
            for raw in client.hmget("unacked", fresh) if fresh else []:
                if raw is not None:
                    payload, _exchange, routing_key = json.loads(raw)
                    if routing_key == queue:
                        jobs.add(_job_of(payload))
            return jobs
        finally:
            client.close()
    if url.startswith("sqla+"):
        return {_job_of(row.payload) for row in _waiting_sqla(url, queue)}
    raise ValueError(f"cannot look into the broker at {url.split(':', 1)[0]}://")


def withdraw_job(app: Celery, job_id: str) -> int:
    """Remove the job's waiting messages from its queue; returns how many were removed.

    A message already taken by a worker is not reachable here; that worker finds the job no longer
    queued and drops it, so withdrawing is an optimisation of the queue, never needed for safety.
    """
    url, queue = app.conf.broker_url, app.conf.task_default_queue
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            return sum(client.lrem(queue, 1, raw) for raw in client.lrange(queue, 0, -1) if _is_for(job_id, raw))
        finally:
            client.close()
    if url.startswith("sqla+"):
        ids = [row.id for row in _waiting_sqla(url, queue) if _is_for(job_id, row.payload)]
        with engine_for(url.removeprefix("sqla+")).begin() as conn:
            for message_id in ids:
                conn.execute(text("DELETE FROM kombu_message WHERE id = :id"), {"id": message_id})
        return len(ids)
    return 0
