"""A run that lost its lease (its job was requeued and claimed again) writes nothing more: every write
of the stale run is refused in the same transaction, on both backends, and the new owner's rows and
files stay as they were."""

import pytest
from sqlalchemy import select

from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import LeaseLost, transition
from core.models import Checkpoint, Job, JobStatus
from worker import runner
from worker.tasks import fail_if_unfinished, heartbeat


def requeue(settings, job_id: str) -> None:
    """What the reaper does to a job whose lease expired: back to the queue, no holder."""
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.queued, values={"worker_id": None})


def save(text: str):
    def write(directory):
        (directory / "model").mkdir()
        (directory / "model" / "weights.bin").write_text(text)
    return write


def checkpoints(settings, job_id: str) -> list[Checkpoint]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def events(client, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]


def test_a_stale_finish_never_moves_a_requeued_job(client, settings, job_id, claim):
    stale = claim(job_id)
    requeue(settings, job_id)
    before = events(client, job_id)
    for target in (JobStatus.cancelled, JobStatus.failed):
        with pytest.raises(LeaseLost):
            runner.finish(settings, stale, target, "stopped at step 8")
    fail_if_unfinished(settings.database_url, stale, "the training process exited with code 1")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert events(client, job_id) == before


def test_every_write_of_a_stale_run_is_refused(client, settings, job_id, claim, reporter):
    store = ArtifactStore(settings.artifacts_dir)
    first = claim(job_id)
    stale = reporter(first)
    stale.on_start(10)
    stale.on_metrics(1, {"train/loss": 1.0})
    stale.on_checkpoint(1, save("attempt 1, step 1"), {"metrics": {}})
    requeue(settings, job_id)
    second = claim(job_id)  # the same worker may claim the job again: the attempt tells them apart
    assert (first.worker_id, first.attempt, second.attempt) == (second.worker_id, 1, 2)
    owner = reporter(second)
    resume = owner.latest_checkpoint()  # a resumed run finds the earlier attempt's checkpoint
    assert resume.step == 1 and (store.path(resume.artifact_key) / "model" / "weights.bin").is_file()
    owner.on_start(20)
    owner.on_metrics(2, {"train/loss": 0.5})
    owner.on_checkpoint(2, save("attempt 2, step 2"), {"metrics": {}})
    before = events(client, job_id)

    for write in (lambda: stale.on_checkpoint(2, save("attempt 1, step 2"), {"metrics": {}}),
                  lambda: stale.on_checkpoint(3, save("attempt 1, step 3"), {"metrics": {}}),
                  lambda: stale.on_start(10), lambda: stale.on_event("info", "still here"),
                  lambda: stale.mark_final(2), stale.should_stop,
                  lambda: (stale.on_metrics(2, {"train/loss": 9.0}), stale.flush()),
                  lambda: runner.finish(settings, first, JobStatus.succeeded, "finished at step 2")):
        with pytest.raises(LeaseLost):
            write()
    fail_if_unfinished(settings.database_url, first, "the training process exited with code 1")
    assert heartbeat(settings.database_url, first) is False

    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["current_step"], job["total_steps"], job["attempts"]) == ("running", 2, 20, 2)
    assert [(m["step"], m["values"]) for m in client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]] == [
        (1, {"train/loss": 1.0}), (2, {"train/loss": 0.5})]
    assert events(client, job_id) == before
    rows = checkpoints(settings, job_id)
    assert [(c.step, c.is_final) for c in rows] == [(1, False), (2, False)]
    for row, text in zip(rows, ["attempt 1, step 1", "attempt 2, step 2"], strict=True):
        assert (store.path(row.artifact_key) / "model" / "weights.bin").read_text() == text
    # The stale run's unrecorded files are gone; the job's files are its two checkpoints only.
    assert sorted(p.relative_to(store.path(f"jobs/{job_id}")).as_posix()
                  for p in store.path(f"jobs/{job_id}").glob("*/*")) == [
        "attempt-1/checkpoint-00000001", "attempt-2/checkpoint-00000002"]

    # The holder is untouched by all this and ends the job.
    assert heartbeat(settings.database_url, second) is True and owner.should_stop() is False
    owner.mark_final(2)
    runner.finish(settings, second, JobStatus.succeeded, "finished at step 2")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
    assert [c.is_final for c in checkpoints(settings, job_id)] == [False, True]


def test_a_cancel_request_stops_the_holder_cleanly(client, settings, job_id, claim, reporter):
    lease = claim(job_id)
    run = reporter(lease)
    assert run.should_stop() is False
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelling"
    assert run.should_stop() is True
    run.on_checkpoint(4, save("stopped at 4"), {"metrics": {}})  # the lease still holds while cancelling
    runner.finish(settings, lease, JobStatus.cancelled, "stopped at step 4; checkpoint kept")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert [c.step for c in checkpoints(settings, job_id)] == [4]


def test_a_run_started_after_its_job_was_handed_on_records_nothing(client, settings, job_id, monkeypatch, claim):
    stale = claim(job_id)
    requeue(settings, job_id)
    claim(job_id)
    before = events(client, job_id)
    monkeypatch.setattr(runner, "get_settings", lambda: settings)
    code = runner.main(["worker.runner", job_id, stale.worker_id, str(stale.attempt)])
    assert code == runner.LEASE_LOST_EXIT
    assert events(client, job_id) == before
    with session_scope(settings.database_url) as session:
        assert session.get(Job, job_id).status == JobStatus.running
