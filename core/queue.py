"""The Celery application, configured from settings; the API uses it only to send tasks by name."""

import json

import redis
from celery import Celery
from kombu import Queue
from sqlalchemy import inspect, text

from core.db import engine_for
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


def _is_for(job_id: str, raw: bytes | str) -> bool:
    message_id = json.loads(raw).get("headers", {}).get("id", "")
    return message_id == job_id or message_id.startswith(job_id + "-")


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
        engine = engine_for(url.removeprefix("sqla+"))
        if not inspect(engine).has_table("kombu_message"):
            return 0
        with engine.begin() as conn:
            rows = conn.execute(text(
                "SELECT m.id, m.payload FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
                "WHERE q.name = :queue AND m.visible"), {"queue": queue}).all()
            ids = [row.id for row in rows if _is_for(job_id, row.payload)]
            for message_id in ids:
                conn.execute(text("DELETE FROM kombu_message WHERE id = :id"), {"id": message_id})
            return len(ids)
    return 0
