"""A worker frozen past its lease (SIGSTOP of its whole process group) while a second worker resumes
its job: when it wakes up (SIGCONT), every write of its stale run is refused and it stops, so the job
ends with the new owner's metrics, checkpoints and outcome only."""

import hashlib
import signal

import pytest

from tests.e2e.e2e_support import create_dataset, wait_for, wait_for_log

pytestmark = pytest.mark.e2e
STEPS, EVERY = 400, 100


def resumed_step(client, job_id: str) -> int | None:
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    resumes = [e["message"] for e in events if e["message"].startswith("resuming from the checkpoint at step")]
    return int(resumes[-1].rsplit(" ", 1)[1]) if resumes else None


def test_a_worker_that_lost_its_lease_writes_nothing_more(dep):
    client = dep.client
    job_id = client.post("/v1/jobs", json={
        "type": "dpo", "base_model": "builtin:tiny-llama", "dataset_id": create_dataset(client), "seed": 3,
        "hyperparameters": {"learning_rate": 1e-3, "max_steps": STEPS, "checkpoint_every": EVERY}}).json()["id"]
    wait_for(client, job_id, lambda j: j["current_step"] >= EVERY + 10, f"step {EVERY + 10}")
    dep.signal_worker(signal.SIGSTOP)  # frozen mid-run: no heartbeats, no writes, lease expires
    try:
        dep.start_worker("second")
        wait_for(client, job_id, lambda j: j["attempts"] == 2 and j["status"] == "running", "a second attempt")
        wait_for(client, job_id, lambda j: (resumed_step(client, job_id) or STEPS) + 10 <= j["current_step"],
                 "progress after the resume")
    finally:
        dep.signal_worker(signal.SIGCONT)  # the stale run wakes up in the middle of the new owner's run

    job = wait_for(client, job_id, lambda j: j["status"] not in ("queued", "running"), "its end")
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["current_step"] == STEPS

    metrics = client.get(f"/v1/jobs/{job_id}/metrics", params={"limit": 1000}).json()["data"]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # exactly one row per step
    checkpoints = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == list(range(EVERY, STEPS + 1, EVERY))
    for checkpoint in checkpoints:  # each file set is the one its row describes, not overwritten
        archive = client.get(f"/v1/checkpoints/{checkpoint['id']}/download")
        assert archive.status_code == 200
        assert hashlib.sha256(archive.content).hexdigest() == checkpoint["sha256"]

    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    assert not [e["message"] for e in events if e["message"].startswith("stopped at step")]
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["running", "queued", "running", "succeeded"]  # one terminal status event
    wait_for_log(dep, "worker", "lost its lease")  # the stale run did wake up, and was fenced
