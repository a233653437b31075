"""How a job's ranks tell the child that launched them why they failed, and which GPU counts it refuses."""

import pytest
import torch

from core.lifecycle import Lease
from core.models import JobStatus
from trainers.distributed.ranks import Ranks
from worker import torchrun
from worker.outcomes import internal_failure, user_failure


@pytest.fixture
def reports(tmp_path, monkeypatch):
    monkeypatch.setenv(torchrun.REPORTS_ENV, str(tmp_path))
    return tmp_path


def test_the_first_failure_reported_is_the_one_recorded(reports, monkeypatch):
    clock = iter([100.0, 101.0, 102.0])
    monkeypatch.setattr(torchrun.time, "time", lambda: next(clock))
    torchrun.report(Ranks(rank=1, world_size=2), user_failure("the training data has no rows"))
    torchrun.report(Ranks(rank=0, world_size=2), internal_failure("internal error: RuntimeError: peer closed"))
    torchrun.report(Ranks(rank=1, world_size=2), internal_failure("a later catch-all"))  # rank 1's first stands

    first = torchrun.first_report(str(reports))
    assert first.rank == 1 and first.at == 100.0
    assert first.outcome == user_failure("the training data has no rows")
    assert first.outcome.status is JobStatus.failed
    assert sorted(p.name for p in reports.iterdir()) == ["0.json", "1.json"]


def test_a_lost_lease_is_reported_without_an_outcome(reports):
    torchrun.report(Ranks(rank=0, world_size=2), None)
    first = torchrun.first_report(str(reports))
    assert (first.rank, first.outcome) == (0, None)


def test_no_report_outside_a_launched_run_and_none_read_from_an_empty_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(torchrun.REPORTS_ENV, raising=False)
    torchrun.report(Ranks(rank=1, world_size=2), user_failure("x"))
    assert torchrun.first_report(str(tmp_path)) is None


def test_each_rank_runs_the_runner_under_the_childs_lease():
    lease = Lease(job_id="job-1", attempt=3, worker_id="host:42")
    assert torchrun.rank_program(lease) == ["-m", "worker.runner", "job-1", "host:42", "3"]


@pytest.mark.parametrize(("gpus", "processes", "refused"), [(None, 8, False), (2, 2, False), (2, 3, True),
                                                            (1, 2, True)])
def test_a_gpu_worker_refuses_more_processes_than_its_gpus(monkeypatch, gpus, processes, refused):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus is not None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus or 0)
    outcome = torchrun.device_shortfall(processes)
    if not refused:
        assert outcome is None  # a CPU-only worker shares its cores among any number of ranks
        return
    assert outcome.status is JobStatus.failed
    assert outcome.error["type"] == "user_error" and outcome.error["param"] == "processes"
    assert f"processes is {processes}" in outcome.message and f"has {gpus} GPU" in outcome.message


def test_a_rank_killed_by_a_signal_is_named_in_the_exit_message():
    """torchrun stops the other ranks and ends its output with the first failure, which the message names."""
    import os
    import subprocess

    from trainers.distributed.launch import torchrun_command
    from worker.outcomes import exit_message

    program = "import os, time\nif os.environ['RANK'] == '1':\n    os.abort()\ntime.sleep(120)"
    argv, env = torchrun_command(["-c", program], processes=2)
    done = subprocess.run(argv, env=os.environ | env, capture_output=True, text=True, timeout=100)
    assert done.returncode == 1
    assert exit_message(done.returncode, done.stderr[-2000:]) == (
        "the training process exited with code 1: rank 1 exited with code -6 (SIGABRT)")
