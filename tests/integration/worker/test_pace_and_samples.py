"""What a run reports for a live view, on both backends: samples, stored through its lease and replaced by a
resumed run; and its pace, written with its metrics while it runs and cleared whenever it stops running."""

import math
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from core.db import session_scope
from core.lifecycle import LeaseLost, transition
from core.models import Job, JobSample, JobStatus, utcnow
from core.queue import make_celery
from worker import runner
from worker.reaper import reap_stale_jobs

ROW = {"prompt": "Say hi", "completion": "hi", "reward": 1.0, "reward/has_i": 1.0, "length": 3}


def samples(settings, job_id: str) -> dict[int, list[dict]]:
    with session_scope(settings.database_url) as session:
        return {s.step: s.rows for s in session.scalars(select(JobSample).where(JobSample.job_id == job_id))}


def pace(client, job_id: str) -> tuple:
    job = client.get(f"/v1/jobs/{job_id}").json()
    return job["steps_per_second"], job["tokens_per_second"], job["estimated_finish"]


def report_steps(rep, steps, tokens_per_step: int = 100) -> None:
    for step in steps:
        time.sleep(0.01)  # the monotonic clock moves between steps
        rep.on_metrics(step, {"train/loss": 1.0 / step, "train/num_tokens": float(step * tokens_per_step)})
    rep.flush()


def test_samples_are_written_under_the_lease_after_the_metrics_and_replaced_by_a_resumed_run(
        client, settings, job_id, claim, reporter):
    first = claim(job_id)
    rep = reporter(first)
    rep.on_metrics(4, {"train/loss": 0.5})  # buffered: the samples write flushes it first
    rep.on_samples(4, [ROW, ROW | {"completion": "nul\x00byte", "reward": math.nan}])
    assert [m["step"] for m in client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]] == [4]
    stored = samples(settings, job_id)[4]
    assert stored[0] == ROW
    assert stored[1]["completion"] == "nul\ufffdbyte" and stored[1]["reward"] is None  # what both backends hold

    with session_scope(settings.database_url) as session:  # the reaper hands the job on; it is claimed again
        transition(session, job_id, JobStatus.queued, values={"worker_id": None})
    second = claim(job_id)
    with pytest.raises(LeaseLost):
        rep.on_samples(8, [ROW])
    resumed = reporter(second)
    resumed.on_samples(4, [ROW | {"completion": "hello"}])  # the resumed run samples step 4 again
    resumed.on_samples(8, [ROW])
    assert samples(settings, job_id) == {4: [ROW | {"completion": "hello"}], 8: [ROW]}


def test_the_pace_is_written_with_the_metrics_while_running_and_cleared_when_the_run_stops(
        client, settings, job_id, claim, reporter):
    assert client.get(f"/v1/jobs/{job_id}").json()["progress"] is None  # its total is unknown until it starts
    rep = reporter(claim(job_id))
    rep.on_start(10)
    report_steps(rep, [1])
    assert pace(client, job_id) == (None, None, None)  # the first step is the warm-up: nothing measured yet
    before = utcnow()
    report_steps(rep, [2, 3, 4])
    steps_per_second, tokens_per_second, finish = pace(client, job_id)
    assert steps_per_second > 0 and tokens_per_second == pytest.approx(100 * steps_per_second)
    assert datetime.fromisoformat(finish) > before  # now + the 6 steps left at that rate
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["current_step"], job["total_steps"], job["progress"]) == (4, 10, 0.4)

    client.post(f"/v1/jobs/{job_id}/cancel")  # cancelling: the run stops at its next poll
    assert pace(client, job_id) == (None, None, None)
    report_steps(rep, [5, 6])  # its last steps' metrics are kept, its pace is not
    assert pace(client, job_id) == (None, None, None) and client.get(f"/v1/jobs/{job_id}").json()["progress"] == 0.6
    runner.finish(settings, rep.lease, JobStatus.cancelled, "stopped at step 6")
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["progress"], pace(client, job_id)) == ("cancelled", 0.6, (None, None, None))


def test_a_run_that_succeeds_shows_progress_1_and_no_pace(client, settings, job_id, claim, reporter):
    rep = reporter(claim(job_id))
    rep.on_start(8)
    report_steps(rep, [1, 2, 3])
    assert pace(client, job_id)[0] > 0
    runner.finish(settings, rep.lease, JobStatus.succeeded, "completed 3 steps")  # a run may end early
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["progress"], pace(client, job_id)) == (1.0, (None, None, None))


def test_a_job_the_reaper_hands_back_to_the_queue_loses_its_pace(client, settings, job_id, claim, reporter):
    lease = claim(job_id)
    rep = reporter(lease)
    rep.on_start(10)
    report_steps(rep, [1, 2])
    assert pace(client, job_id)[0] > 0
    with session_scope(settings.database_url) as session:  # its worker vanished
        session.execute(update(Job).where(Job.id == job_id)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=settings.lease_seconds + 5)))
    assert reap_stale_jobs(settings, make_celery(settings)) == [(job_id, "queued")]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert (job["status"], job["progress"], pace(client, job_id)) == ("queued", 0.2, (None, None, None))
