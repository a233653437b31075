"""The training child of a job of several processes: what it records from how its ranks ended.

The ranks themselves (torchrun, gloo, training) run in the end-to-end tests; here torchrun's run is
replaced by its result, and the database, runner and API are real.
"""

import pytest
import torch

from core.db import session_scope
from core.models import Job
from worker import runner, torchrun
from worker.outcomes import user_failure


@pytest.fixture
def two_process_job(client, settings, claimed_job, monkeypatch):
    """The claimed job, asking for 2 processes, with the runner reading the test's settings."""
    with session_scope(settings.database_url) as session:
        session.get(Job, claimed_job.job_id).processes = 2
    monkeypatch.setattr(runner, "get_settings", lambda: settings)
    return claimed_job


def run_child(lease) -> int:
    return runner.main(["worker.runner", lease.job_id, lease.worker_id, str(lease.attempt)])


def test_more_processes_than_the_workers_gpus_fail_naming_processes(client, two_process_job, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    started = []
    monkeypatch.setattr(torchrun, "run_ranks", lambda *args: started.append(args) or (0, None))
    assert run_child(two_process_job) == 0
    assert started == []  # no rank was started
    job = client.get(f"/v1/jobs/{two_process_job.job_id}").json()
    assert job["status"] == "failed" and job["processes"] == 2
    assert job["error"]["type"] == "user_error" and job["error"]["param"] == "processes"
    assert "processes is 2, but this worker has 1 GPU" in job["error"]["message"]


def test_the_first_failed_ranks_outcome_is_recorded(client, settings, two_process_job, monkeypatch):
    failure = user_failure("training diverged: non-finite loss at step 1")
    calls = []
    monkeypatch.setattr(torchrun, "run_ranks",
                        lambda *args: calls.append(args) or (1, torchrun.RankReport(1, 0.0, failure)))
    assert run_child(two_process_job) == 0
    assert calls == [(two_process_job, 2, settings.torch_threads or 1)]  # a thread per rank unless set
    job = client.get(f"/v1/jobs/{two_process_job.job_id}").json()
    assert job["status"] == "failed" and job["error"] == failure.error


@pytest.mark.parametrize(("code", "report", "exit_status"), [
    (1, None, 1),  # no rank said why (e.g. killed by a signal): the worker records the stderr tail
    (-9, None, 137),  # torchrun itself killed
    (1, torchrun.RankReport(0, 0.0, None), runner.LEASE_LOST_EXIT),  # rank 0 lost the lease
])  # fmt: skip
def test_ranks_that_failed_without_an_outcome_leave_the_job_to_the_worker(client, two_process_job, monkeypatch,
                                                                          code, report, exit_status):
    monkeypatch.setattr(torchrun, "run_ranks", lambda lease, processes, threads: (code, report))
    assert run_child(two_process_job) == exit_status
    assert client.get(f"/v1/jobs/{two_process_job.job_id}").json()["status"] == "running"
