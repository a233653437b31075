"""Faults during a job: a worker killed with SIGKILL mid-job (the job resumes from its last checkpoint
on a new worker), and a loss that turns NaN (the job fails naming the step)."""

import pytest

from tests.e2e.e2e_support import create_dataset, deployment, poisoned_base_model, wait_for

pytestmark = pytest.mark.e2e
STEPS, EVERY = 400, 100


def test_killed_worker_costs_only_the_steps_since_the_last_checkpoint(dep):
    client = dep.client
    job_id = client.post("/v1/jobs", json={
        "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": create_dataset(client), "seed": 3,
        "hyperparameters": {"learning_rate": 1e-3, "max_steps": STEPS, "checkpoint_every": EVERY}}).json()["id"]
    wait_for(client, job_id, lambda j: j["current_step"] >= EVERY + 30, f"step {EVERY + 30}")
    dep.kill_worker()
    killed_at = client.get(f"/v1/jobs/{job_id}").json()
    assert killed_at["status"] == "running"
    last_checkpoint = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"][-1]["step"]
    assert last_checkpoint >= EVERY

    dep.start_worker()
    job = wait_for(client, job_id, lambda j: j["status"] in ("succeeded", "failed"), "its end")
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["current_step"] == STEPS

    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # exactly one row per step
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    messages = [e["message"] for e in events]
    assert any("requeued to resume" in m for m in messages)
    resume = next(e for e in events if e["message"] == f"resuming from the checkpoint at step {last_checkpoint}")
    rewritten = [m["step"] for m in metrics if m["created_at"] > resume["created_at"]]
    assert min(rewritten) == last_checkpoint + 1  # the step after the resume follows the checkpoint
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["running", "queued", "running", "succeeded"]


@pytest.fixture
def embedded_dep(request, tmp_path):
    with deployment(request, tmp_path, backend="embedded") as dep:
        yield dep


def test_a_nan_loss_fails_the_job_naming_the_step(embedded_dep):
    """A poisoned base model (one NaN weight) under the models root makes the first loss NaN."""
    base = poisoned_base_model(embedded_dep.settings.models_dir)

    client = embedded_dep.client
    job_id = client.post("/v1/jobs", json={"type": "dpo", "base_model": base,
                                           "dataset_id": create_dataset(client)}).json()["id"]
    job = wait_for(client, job_id, lambda j: j["status"] not in ("queued", "running"), "its end")
    assert job["status"] == "failed"
    assert job["error"]["type"] == "user_error" and "step 1" in job["error"]["message"]
    assert "non-finite" in job["error"]["message"]
