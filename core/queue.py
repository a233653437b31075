"""The Celery application, configured from settings; the API uses it only to send tasks by name."""

from celery import Celery
from kombu import Queue

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


def enqueue_job(app: Celery, job_id: str) -> None:
    """Send the job to its queue; call only after the job row is committed."""
    app.send_task(RUN_JOB_TASK, args=[job_id], retry=True, retry_policy={"max_retries": 2})
