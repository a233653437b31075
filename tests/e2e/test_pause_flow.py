"""Pause and resume with a real API and worker: a running job pauses at its next step with a checkpoint,
holds no worker while paused, and once resumed continues from that checkpoint to the step count an
uninterrupted job reaches, without computing any earlier step again."""


import pytest

from tests.e2e.e2e_support import create_dataset, wait_for

pytestmark = pytest.mark.e2e
# Steps take milliseconds: enough of them that the pause lands well before the end.
STEPS, EVERY = 120, 30


def wait_quickly(client, job_id: str, predicate, what: str) -> dict:
    """`wait_for` with a short poll, so the pause lands soon after the first reported step."""
    return wait_for(client, job_id, predicate, what, poll=0.05)


def test_a_paused_job_resumes_from_its_checkpoint_and_completes(embedded_service):
    client = embedded_service
    job_id = client.post("/v1/jobs", json={
        "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": create_dataset(client), "seed": 5,
        "hyperparameters": {"learning_rate": 1e-3, "max_steps": STEPS, "checkpoint_every": EVERY}}).json()["id"]
    wait_quickly(client, job_id, lambda j: j["current_step"] >= 1, "step 1")
    r = client.post(f"/v1/jobs/{job_id}/pause")
    assert r.status_code == 200 and r.json()["status"] == "pausing"
    paused = wait_for(client, job_id, lambda j: j["status"] not in ("running", "pausing"), "paused")
    assert paused["status"] == "paused", paused["error"]
    assert paused["finished_at"] is None and paused["attempts"] == 1
    pause_step = paused["current_step"]
    assert 1 <= pause_step < STEPS

    # The run stopped with a checkpoint of the step it reached, and its status event names it.
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert checkpoints[-1]["step"] == pause_step and not any(c["is_final"] for c in checkpoints)
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    pause_event = events[-1]
    assert (pause_event["type"], pause_event["data"]) == ("status", {"status": "paused", "previous": "pausing"})
    assert pause_event["message"] == (f"paused at step {pause_step}; checkpoint {checkpoints[-1]['id']} of step "
                                      f"{pause_step} kept, a resume continues from it")
    assert client.get("/v1/jobs", params={"status": "paused"}).json()["data"][0]["id"] == job_id

    r = client.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    job = wait_for(client, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), "its end")
    assert job["status"] == "succeeded", job["error"]
    assert (job["current_step"], job["total_steps"], job["attempts"]) == (STEPS, STEPS, 2)

    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # one row per step, as uninterrupted
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    resume = next(e for e in events if e["message"] == f"resuming from the checkpoint at step {pause_step}")
    # Every step up to the pause was written before the pause and never again; the resumed run's first is the next.
    after_resume = [m["step"] for m in metrics if m["created_at"] > resume["created_at"]]
    assert min(after_resume) == pause_step + 1
    assert all(m["created_at"] <= pause_event["created_at"] for m in metrics if m["step"] <= pause_step)
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["running", "pausing", "paused", "queued", "running", "succeeded"]
    final = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"][-1]
    assert (final["step"], final["is_final"]) == (STEPS, True)
