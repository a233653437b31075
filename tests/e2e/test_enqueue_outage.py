"""A job requeued while the broker is down: of two workers, the one running it is killed, Redis
stops, the lease runs out and the other worker's reaper requeues the job, but cannot send it. When
Redis is back, the job's outbox mark makes that worker send it, and the job runs and succeeds.

Postgres, with a Redis of the test's own (on a spare port) as the broker, so it can be stopped.
"""

import os
import signal
import time
from contextlib import suppress

import pytest
from sqlalchemy import select

from core.db import session_scope
from core.models import Job
from tests.e2e.e2e_support import SHORT_LEASE, Deployment, PrivateRedis, create_dataset, wait_for, wait_for_log

pytestmark = pytest.mark.e2e
STEPS, EVERY = 40, 20
LEASE = SHORT_LEASE | {"UNSENT_GRACE_SECONDS": "1"}


def job_row(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        return session.scalars(select(Job).where(Job.id == job_id)).one()


def owner(dep, job: Job) -> str:
    """Name of the worker process whose group runs the job (`worker_id` is host:pid of its pool process)."""
    group = os.getpgid(int(job.worker_id.rsplit(":", 1)[1]))
    return next(name for name, proc in dep.procs.items() if proc.pid == group)


def test_a_job_requeued_while_the_broker_is_down_runs_once_it_is_back(postgres_settings_factory, tmp_path):
    broker = PrivateRedis(tmp_path / "redis")
    broker.start()
    settings = postgres_settings_factory().model_copy(update={"celery_broker_url": broker.url})
    dep = Deployment(settings, tmp_path, **LEASE)
    try:
        dep.start_api()
        for name in ("worker", "second"):
            dep.start_worker(name)
            wait_for_log(dep, name, " ready.")
        client = dep.client
        job_id = client.post("/v1/jobs", json={
            "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": create_dataset(client), "seed": 3,
            "hyperparameters": {"learning_rate": 1e-3, "max_steps": STEPS, "checkpoint_every": EVERY}}).json()["id"]
        wait_for(client, job_id, lambda j: j["status"] == "running", "running")

        dep.signal_worker(signal.SIGKILL, owner(dep, job_row(settings, job_id)))  # with its training process
        broker.stop()
        wait_for(client, job_id, lambda j: j["status"] == "queued", "queued again by the other worker's reaper")
        assert job_row(settings, job_id).enqueued_at is None  # the send failed: still to be sent
        time.sleep(2)  # the other worker's reaper passes meanwhile try to send it, and fail
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"

        broker.start()
        job = wait_for(client, job_id, lambda j: j["status"] not in ("queued", "running"), "its end")
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2 and job["current_step"] == STEPS
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
        assert statuses == ["running", "queued", "running", "succeeded"]
    except BaseException:
        for name in ("api", "worker", "second"):
            print(f"--- {name} log ---\n{dep.log(name)}")
        raise
    finally:
        dep.stop()
        with suppress(Exception):  # already stopped by a failed test
            broker.stop()
