"""A pause request as a run and the reaper see it, on both backends: the run stops at its next poll,
the job ends paused naming the checkpoint it keeps, and a resume's run starts from that checkpoint."""

from datetime import timedelta

import pytest

from core.db import session_scope
from core.lifecycle import LeaseLost, transition
from core.models import Checkpoint, Job, JobStatus, utcnow
from core.queue import make_celery
from trainers.spec.results import RunResult
from worker import runner
from worker.reaper import reap_stale_jobs


def save(directory) -> None:
    (directory / "model").mkdir()
    (directory / "model" / "weights.bin").write_text("weights")


def job_row(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def checkpoint_rows(settings, job_id: str) -> list[tuple[str, int, bool]]:
    with session_scope(settings.database_url) as session:
        return [(c.id, c.step, c.is_final) for c in session.query(Checkpoint).filter_by(job_id=job_id)
                .order_by(Checkpoint.step)]


def last_event(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"][-1]


def test_a_paused_run_keeps_its_checkpoint_and_its_resume_starts_from_it(client, settings, job_id, claim, reporter):
    lease = claim(job_id)
    run = reporter(lease)
    run.on_checkpoint(2, save, {"metrics": {}})
    assert run.should_stop() is False
    assert client.post(f"/v1/jobs/{job_id}/pause").json()["status"] == "pausing"
    assert run.should_stop() is True
    run.on_checkpoint(3, save, {"metrics": {}})  # the lease still holds while pausing: the stop's checkpoint
    runner.finish_run(settings, lease, RunResult("stopped", 3))

    job = job_row(settings, job_id)
    assert (job.status, job.worker_id, job.finished_at) == ("paused", None, None)
    (_, _, first_final), (checkpoint_id, step, final) = checkpoint_rows(settings, job_id)
    assert step == 3 and not final and not first_final  # a paused job has no final checkpoint yet
    event = last_event(client, job_id)
    assert event["data"] == {"status": "paused", "previous": "pausing"}
    assert event["message"] == (
        f"paused at step 3; checkpoint {checkpoint_id} of step 3 kept, a resume continues from it")
    with pytest.raises(LeaseLost):  # the paused job holds no lease: the old run writes nothing more
        run.on_event("info", "late")
    assert reap_stale_jobs(settings, make_celery(settings)) == []  # nor does the reaper touch it

    assert client.post(f"/v1/jobs/{job_id}/resume").json()["status"] == "queued"
    resumed = claim(job_id, "w2")
    assert resumed.attempt == 2
    again = reporter(resumed)
    assert again.latest_checkpoint().id == checkpoint_id  # what train() resumes from
    again.on_metrics(4, {"train/loss": 0.5})
    again.flush()
    again.on_checkpoint(4, save, {"metrics": {}})
    runner.finish_run(settings, resumed, RunResult("completed", 4))
    assert job_row(settings, job_id).status == "succeeded"
    assert [(s, f) for _, s, f in checkpoint_rows(settings, job_id)] == [(2, False), (3, False), (4, True)]


def test_a_cancel_that_overrides_a_pause_ends_the_run_cancelled(client, settings, job_id, claim, reporter):
    lease = claim(job_id)
    client.post(f"/v1/jobs/{job_id}/pause")
    assert reporter(lease).should_stop() is True
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    runner.finish_run(settings, lease, RunResult("stopped", 5))
    assert job_row(settings, job_id).status == "cancelled"
    assert last_event(client, job_id)["message"] == "stopped at step 5; checkpoint kept"


def test_a_run_that_completes_before_it_notices_the_pause_succeeds(client, settings, job_id, claim):
    lease = claim(job_id)
    client.post(f"/v1/jobs/{job_id}/pause")
    runner.finish_run(settings, lease, RunResult("completed", 6))
    assert job_row(settings, job_id).status == "succeeded"


def test_a_pause_before_training_starts(client, settings, job_id, claim):
    lease = claim(job_id)
    client.post(f"/v1/jobs/{job_id}/pause")
    runner.finish_run(settings, lease, None)
    assert job_row(settings, job_id).status == "paused"
    assert last_event(client, job_id)["message"] == (
        "paused at step 0, before any checkpoint; a resume starts from the beginning")


def lose_worker(settings, job_id: str, *, attempts: int, status: JobStatus) -> None:
    """The job under worker w1 in `status`, whose heartbeat stopped beyond the lease."""
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.running, values={
            "worker_id": "w1", "attempts": attempts,
            "heartbeat_at": utcnow() - timedelta(seconds=settings.lease_seconds + 5)})
        if status != JobStatus.running:
            transition(session, job_id, status)


def test_a_lost_pausing_job_ends_paused(client, settings, job_id):
    lose_worker(settings, job_id, attempts=1, status=JobStatus.pausing)
    assert reap_stale_jobs(settings, make_celery(settings)) == [(job_id, "paused")]
    assert job_row(settings, job_id).worker_id is None
    assert "while pausing; last checkpoint kept" in last_event(client, job_id)["message"]


def test_runs_after_a_resume_do_not_count_against_max_attempts(client, settings, job_id):
    for _ in range(settings.max_attempts - 1):  # paused and resumed: each resume's run is one more attempt
        with session_scope(settings.database_url) as session:
            transition(session, job_id, JobStatus.paused)
            transition(session, job_id, JobStatus.queued)
    lose_worker(settings, job_id, attempts=settings.max_attempts, status=JobStatus.running)
    assert reap_stale_jobs(settings, make_celery(settings)) == [(job_id, "queued")]
