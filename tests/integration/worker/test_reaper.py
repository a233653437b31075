"""Lost workers and withdrawn messages, on both backends with their real brokers."""

from datetime import timedelta

from core.db import session_scope
from core.lifecycle import transition
from core.models import Job, JobStatus, utcnow
from core.queue import make_celery
from tests.support import queued_messages
from worker.reaper import reap_stale_jobs


def run_with_heartbeat(settings, job_id, *, age_seconds: float, attempts: int = 1, status=JobStatus.running):
    """Put the job in `status` under a worker whose last heartbeat is `age_seconds` old."""
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.running, values={
            "worker_id": "w1", "attempts": attempts, "heartbeat_at": utcnow() - timedelta(seconds=age_seconds)})
        if status == JobStatus.cancelling:
            transition(session, job_id, JobStatus.cancelling)


def job(settings, job_id) -> Job:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def test_lost_job_is_requeued_with_a_new_message(client, settings, job_id):
    app = make_celery(settings)
    run_with_heartbeat(settings, job_id, age_seconds=settings.lease_seconds + 5)
    assert reap_stale_jobs(settings, app) == [(job_id, "queued")]
    assert job(settings, job_id).status == "queued" and job(settings, job_id).worker_id is None
    # the original message and the requeue's, told apart by their ids
    assert [m["args"] for m in queued_messages(settings)] == [[job_id], [job_id]]
    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert "requeued" in events[-1]["message"]


def test_live_job_is_left_alone(settings, job_id):
    run_with_heartbeat(settings, job_id, age_seconds=1)
    assert reap_stale_jobs(settings, make_celery(settings)) == []
    assert job(settings, job_id).status == "running"


def test_job_out_of_attempts_fails(client, settings, job_id):
    run_with_heartbeat(settings, job_id, age_seconds=settings.lease_seconds + 5, attempts=settings.max_attempts)
    assert reap_stale_jobs(settings, make_celery(settings)) == [(job_id, "failed")]
    error = client.get(f"/v1/jobs/{job_id}").json()["error"]
    assert error["type"] == "internal_error"
    assert f"{settings.max_attempts} of {settings.max_attempts}" in error["message"]


def test_lost_cancelling_job_ends_cancelled(settings, job_id):
    run_with_heartbeat(settings, job_id, age_seconds=settings.lease_seconds + 5, status=JobStatus.cancelling)
    assert reap_stale_jobs(settings, make_celery(settings)) == [(job_id, "cancelled")]


def test_cancelling_a_queued_job_withdraws_its_message(client, settings, job_id):
    other = client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                          "dataset_id": client.get(f"/v1/jobs/{job_id}").json()["dataset_id"]})
    assert len(queued_messages(settings)) == 2
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert [m["args"] for m in queued_messages(settings)] == [[other.json()["id"]]]
