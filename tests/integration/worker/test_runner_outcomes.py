"""How the training process records outcomes it cannot get from a healthy run: out of memory, and a
worker-side crash. A CUDA out-of-memory error cannot be produced on a CPU-only machine, so the trainer
is made to raise the very exception torch raises; the rest (database, runner, API) is real."""

import torch

import trainers
from worker import runner


def test_out_of_memory_fails_with_a_resources_hint(client, settings, claimed_job, monkeypatch):
    def oom(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainers, "run", oom)
    runner.train(settings, claimed_job)
    job = client.get(f"/v1/jobs/{claimed_job.job_id}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "internal_error"
    assert "out of memory" in job["error"]["message"] and "resources" in job["error"]["message"]


def test_an_unforeseen_exception_is_an_internal_error(client, settings, claimed_job, monkeypatch):
    def crash(*_args, **_kwargs):
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(trainers, "run", crash)
    monkeypatch.setattr(runner, "get_settings", lambda: settings)
    assert runner.main(["worker.runner", claimed_job.job_id, "w1", str(claimed_job.attempt)]) == 0
    job = client.get(f"/v1/jobs/{claimed_job.job_id}").json()
    assert job["status"] == "failed" and job["error"]["type"] == "internal_error"
    assert "RuntimeError: something nobody planned for" in job["error"]["message"]
