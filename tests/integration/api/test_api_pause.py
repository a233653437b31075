"""Pause and resume on both backends: the moves each status allows, idempotency, 409s and the queue."""

import pytest

from core.db import session_scope
from core.lifecycle import claim_job, transition
from core.models import Job, JobStatus
from tests.support import jsonl, parse_sse, preference_rows, queued_messages, upload


@pytest.fixture
def dataset_id(client) -> str:
    return upload(client, jsonl(preference_rows(4))).json()["id"]


def new_job(client, dataset_id: str) -> str:
    return client.post("/v1/jobs", json={"type": "dpo", "base_model": "builtin:tiny-llama",
                                         "dataset_id": dataset_id}).json()["id"]


def move(settings, job_id: str, *statuses: JobStatus) -> None:
    with session_scope(settings.database_url) as session:
        for status in statuses:
            transition(session, job_id, status)


def job_row(settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def test_a_queued_job_pauses_at_once_and_resumes_through_the_queue(client, settings, dataset_id):
    job_id = new_job(client, dataset_id)
    r = client.post(f"/v1/jobs/{job_id}/pause")
    assert r.status_code == 200 and r.json()["status"] == "paused" and r.json()["finished_at"] is None
    assert queued_messages(settings) == []  # its message left the queue
    again = client.post(f"/v1/jobs/{job_id}/pause")
    assert again.status_code == 200 and again.json() == r.json()

    r = client.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert queued_messages(settings) == [{"id": job_id, "task": "worker.run_job", "args": [job_id]}]
    assert job_row(settings, job_id).enqueued_at is not None  # sent, and marked as sent
    r = client.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict_error"
    assert "is queued and cannot be resumed" in r.json()["error"]["message"]
    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert [(e["data"]["previous"], e["data"]["status"], e["message"]) for e in events] == [
        ("queued", "paused", "pause requested"), ("paused", "queued", "resume requested")]


def test_a_running_job_is_asked_to_pause(client, settings, dataset_id):
    job_id = new_job(client, dataset_id)
    with session_scope(settings.database_url) as session:
        claim_job(session, job_id, "w1")
    r = client.post(f"/v1/jobs/{job_id}/pause")
    assert r.status_code == 200 and r.json()["status"] == "pausing"
    assert client.post(f"/v1/jobs/{job_id}/pause").json()["status"] == "pausing"
    r = client.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 409 and "is pausing" in r.json()["error"]["message"]

    move(settings, job_id, JobStatus.paused)  # what the run records once it stopped
    assert client.post(f"/v1/jobs/{job_id}/pause").json()["status"] == "paused"
    r = client.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["attempts"] == 1
    # Its first message was taken by the run that paused (here it stays, and finds the job claimed);
    # the resume's message id counts the runs so far.
    assert sorted(m["id"] for m in queued_messages(settings)) == [job_id, f"{job_id}-1"]
    assert job_row(settings, job_id).worker_id is None


def test_a_cancel_overrides_a_pause(client, settings, dataset_id):
    pausing = new_job(client, dataset_id)
    move(settings, pausing, JobStatus.running)
    client.post(f"/v1/jobs/{pausing}/pause")
    r = client.post(f"/v1/jobs/{pausing}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    r = client.post(f"/v1/jobs/{pausing}/pause")
    assert r.status_code == 409 and "is cancelling and cannot be paused" in r.json()["error"]["message"]

    paused = new_job(client, dataset_id)
    client.post(f"/v1/jobs/{paused}/pause")
    r = client.post(f"/v1/jobs/{paused}/cancel")  # nothing runs: cancelled at once
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert client.post(f"/v1/jobs/{paused}/resume").status_code == 409


@pytest.mark.parametrize("end", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_an_ended_job_can_be_neither_paused_nor_resumed(client, settings, dataset_id, end):
    job_id = new_job(client, dataset_id)
    move(settings, job_id, JobStatus.running, JobStatus.cancelling if end == JobStatus.cancelled else end,
         *([end] if end == JobStatus.cancelled else []))
    for action in ("pause", "resume"):
        r = client.post(f"/v1/jobs/{job_id}/{action}")
        assert r.status_code == 409 and r.json()["error"]["param"] == "job_id"
        assert f"is {end.value} and cannot be" in r.json()["error"]["message"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == end.value
    assert client.post("/v1/jobs/job_unknown/pause").status_code == 404
    assert client.post("/v1/jobs/job_unknown/resume").status_code == 404


def test_paused_jobs_are_listed_and_keep_their_dataset(client, settings, dataset_id):
    paused, queued = new_job(client, dataset_id), new_job(client, dataset_id)
    client.post(f"/v1/jobs/{paused}/pause")
    assert [j["id"] for j in client.get("/v1/jobs", params={"status": "paused"}).json()["data"]] == [paused]
    assert [j["id"] for j in client.get("/v1/jobs", params={"status": "queued"}).json()["data"]] == [queued]
    client.post(f"/v1/jobs/{queued}/cancel")
    r = client.delete(f"/v1/datasets/{dataset_id}")  # the paused job still needs it when resumed
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict_error"
    client.post(f"/v1/jobs/{paused}/cancel")
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204


def test_a_resume_while_the_broker_is_away_is_sent_by_the_outbox(settings, dataset_id, project_key, client):
    from fastapi.testclient import TestClient

    from api.main import create_app

    job_id = new_job(client, dataset_id)
    client.post(f"/v1/jobs/{job_id}/pause")
    broken = settings.model_copy(update={"celery_broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken), headers={"Authorization": f"Bearer {project_key}"}) as away:
        r = away.post(f"/v1/jobs/{job_id}/resume")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert job_row(settings, job_id).enqueued_at is None  # unsent: the workers' outbox pass sends it


def test_the_stream_of_a_paused_job_closes_and_picks_up_after_the_resume(client, settings, dataset_id):
    job_id = new_job(client, dataset_id)
    client.post(f"/v1/jobs/{job_id}/pause")
    frames = parse_sse(client.get(f"/v1/jobs/{job_id}/stream").text)  # returns: the stream closed
    assert [(f["event"], f["data"]["status"]) for f in frames] == [("status", "paused")]

    client.post(f"/v1/jobs/{job_id}/resume")
    with session_scope(settings.database_url) as session:
        claim_job(session, job_id, "w1")
        transition(session, job_id, JobStatus.succeeded)
    after = parse_sse(client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": frames[-1]["id"]}).text)
    assert [f["data"]["status"] for f in after] == ["queued", "running", "succeeded"]
