"""Metrics, samples, events, checkpoints, downloads, the live stream and health, on both backends.

Rows are written by the worker's own reporter (the code the training process uses), with a small
stand-in model directory in place of real weights.
"""

import hashlib
import io
import tarfile
import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.artifacts import ArtifactStore
from core.db import session_scope
from core.lifecycle import Lease, transition
from core.models import JobStatus
from tests.support import parse_sse
from worker.reporting import JobReporter


@pytest.fixture
def job_id(claimed_job) -> str:
    return claimed_job.job_id


def reporter(settings, job_id) -> JobReporter:
    return JobReporter(url=settings.database_url, lease=Lease(job_id, 1, "w1"),
                       store=ArtifactStore(settings.artifacts_dir))


def save_files(step: int):
    def save(directory):
        (directory / "model").mkdir()
        (directory / "model" / "config.json").write_text(f'{{"step": {step}}}')
        (directory / "model" / "weights.bin").write_bytes(bytes(range(256)) * 9)
        (directory / "trainer_state.pt").write_bytes(b"optimizer state")
    return save


def test_metrics_are_batched_upserted_and_paginated(client, settings, job_id):
    rep = reporter(settings, job_id)
    for step in range(1, 6):
        rep.on_metrics(step, {"train/loss": 1.0 / step})
    rep.flush()
    assert client.get(f"/v1/jobs/{job_id}").json()["current_step"] == 5
    resumed = reporter(settings, job_id)  # a resumed run reports step 3 again, in a new process
    resumed.on_metrics(3, {"train/loss": 0.25})
    resumed.flush()
    data = client.get(f"/v1/jobs/{job_id}/metrics").json()["data"]
    assert [m["step"] for m in data] == [1, 2, 3, 4, 5]
    assert data[2]["values"] == {"train/loss": 0.25}
    page = client.get(f"/v1/jobs/{job_id}/metrics", params={"after": 2, "limit": 2}).json()
    assert [m["step"] for m in page["data"]] == [3, 4] and page["has_more"]
    assert client.get(f"/v1/jobs/{job_id}").json()["current_step"] == 3  # where the resumed run is


def test_checkpoints_list_and_download_verifies(client, settings, job_id):
    rep = reporter(settings, job_id)
    rep.on_metrics(2, {"train/loss": 0.5})
    rep.on_checkpoint(2, save_files(2), {"metrics": {"train/loss": 0.5}, "probe": {"logits": [0.1]},
                                         "model": {"kind": "causal_lm", "adapter": False}})
    rep.on_checkpoint(4, save_files(4), {"metrics": {"train/loss": 0.4}})
    rep.mark_final(4)
    ckpts = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [(c["step"], c["is_final"]) for c in ckpts] == [(2, False), (4, True)]
    assert ckpts[0]["metrics"] == {"train/loss": 0.5} and ckpts[0]["probe"] == {"logits": [0.1]}
    assert ckpts[0]["model"] == {"kind": "causal_lm", "adapter": False} and ckpts[1]["model"] is None
    # the metrics of the step were flushed before the checkpoint was recorded
    assert client.get(f"/v1/jobs/{job_id}/metrics").json()["data"][0]["step"] == 2

    ckpt = ckpts[0]
    assert client.get(f"/v1/checkpoints/{ckpt['id']}").json() == ckpt
    r = client.get(f"/v1/checkpoints/{ckpt['id']}/download")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content) == ckpt["size_bytes"]
    assert hashlib.sha256(r.content).hexdigest() == ckpt["sha256"]
    names = tarfile.open(fileobj=io.BytesIO(r.content)).getnames()
    # only the model directory travels: optimizer state stays on the server
    assert names == [f"{ckpt['id']}/config.json", f"{ckpt['id']}/weights.bin"]
    assert client.get("/v1/checkpoints/ckpt_unknown/download").status_code == 404


def test_checkpoint_saved_again_replaces_the_older_one(client, settings, job_id):
    rep = reporter(settings, job_id)
    rep.on_checkpoint(2, save_files(2), {"metrics": {}})
    first = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"][0]["id"]
    rep.on_checkpoint(2, save_files(2), {"metrics": {}})
    ckpts = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert len(ckpts) == 1 and ckpts[0]["id"] != first
    assert client.get(f"/v1/checkpoints/{first}").status_code == 404
    assert client.get(f"/v1/checkpoints/{ckpts[0]['id']}/download").status_code == 200


def test_events_and_cancel_flag(client, settings, job_id):
    rep = reporter(settings, job_id)
    rep.on_event("warning", "3 rows were truncated")
    assert rep.should_stop() is False
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert rep.should_stop() is True
    events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert [(e["type"], e["level"], e["message"]) for e in events][1] == ("event", "warning", "3 rows were truncated")
    assert events[-1]["data"]["status"] == "cancelling"


def finish_job(settings, job_id):
    rep = reporter(settings, job_id)
    rep.on_metrics(1, {"train/loss": 0.7})
    rep.on_metrics(2, {"train/loss": 0.6})
    rep.flush()
    rep.on_checkpoint(2, save_files(2), {"metrics": {"train/loss": 0.6}})
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.succeeded)


def test_stream_replays_closes_and_resumes(client, settings, job_id):
    finish_job(settings, job_id)
    frames = parse_sse(client.get(f"/v1/jobs/{job_id}/stream").text)
    kinds = [f["event"] for f in frames]
    assert kinds == ["status", "metrics", "metrics", "checkpoint", "status"], kinds
    assert frames[1]["data"] == {"step": 1, "values": {"train/loss": 0.7}}
    assert frames[3]["data"]["step"] == 2 and frames[3]["data"]["sha256"]
    assert frames[-1]["data"]["status"] == "succeeded"
    resumed = parse_sse(client.get(f"/v1/jobs/{job_id}/stream",
                                   headers={"Last-Event-ID": frames[2]["id"]}).text)
    assert [f["event"] for f in resumed] == ["checkpoint", "status"]
    r = client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "garbage"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "Last-Event-ID"
    assert client.get("/v1/jobs/job_unknown/stream").status_code == 404


def rows(step: int) -> list[dict]:
    return [{"prompt": "Say hi", "completion": f"hi {step}", "reward": 0.5, "length": 4}]


def test_samples_are_paginated_by_step(client, settings, job_id):
    rep = reporter(settings, job_id)
    for step in (2, 4, 6):
        rep.on_samples(step, rows(step))
    reporter(settings, job_id).on_samples(4, rows(40))  # a resumed run reports step 4 again
    data = client.get(f"/v1/jobs/{job_id}/samples").json()["data"]
    assert [(s["step"], s["rows"]) for s in data] == [(2, rows(2)), (4, rows(40)), (6, rows(6))]
    assert all(s["created_at"] for s in data)
    page = client.get(f"/v1/jobs/{job_id}/samples", params={"after": 2, "limit": 1}).json()
    assert [s["step"] for s in page["data"]] == [4] and page["has_more"]
    assert client.get(f"/v1/jobs/{job_id}/samples", params={"after": 6}).json() == {"data": [], "has_more": False}
    assert client.get(f"/v1/jobs/{job_id}/samples", params={"after": "x"}).status_code == 422
    assert client.get("/v1/jobs/job_unknown/samples").status_code == 404


def test_stream_sends_samples_in_order_and_resumes_from_three_and_two_part_ids(client, settings, job_id):
    rep = reporter(settings, job_id)
    for step in (1, 2):
        rep.on_metrics(step, {"train/loss": 1.0 / step})
        rep.on_samples(step, rows(step))  # flushes the step's metrics first
    with session_scope(settings.database_url) as session:
        transition(session, job_id, JobStatus.succeeded)
    frames = parse_sse(client.get(f"/v1/jobs/{job_id}/stream").text)
    assert [f["event"] for f in frames] == ["status", "metrics", "samples", "metrics", "samples", "status"]
    assert frames[2]["data"] == {"step": 1, "rows": rows(1)}
    ids = [tuple(int(part) for part in f["id"].split("-")) for f in frames]
    assert all(len(i) == 3 for i in ids) and ids == sorted(ids)
    assert ids[2][2] > ids[1][2] == 0  # the sample cursor moves with the samples only

    after_step_2_metrics = frames[3]["id"]
    resumed = parse_sse(client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": after_step_2_metrics}).text)
    assert [(f["event"], f["data"].get("step")) for f in resumed] == [("samples", 2), ("status", None)]
    # A two-part id (before samples were streamed) loses nothing: every sample comes again.
    two_part = "-".join(after_step_2_metrics.split("-")[:2])
    resumed = parse_sse(client.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": two_part}).text)
    assert [(f["event"], f["data"].get("step")) for f in resumed] == [("samples", 1), ("samples", 2),
                                                                      ("status", None)]
    assert resumed[-1]["data"]["status"] == "succeeded" and resumed[-1]["id"] == frames[-1]["id"]


def test_stream_delivers_live_updates(settings, job_id, project_key):
    """A client connected before the job finishes receives what happens while it waits."""
    def later():
        time.sleep(0.5)
        finish_job(settings, job_id)

    worker = threading.Thread(target=later)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {project_key}"}) as client:
        started = time.monotonic()
        worker.start()
        frames = parse_sse(client.get(f"/v1/jobs/{job_id}/stream").text)
        worker.join()
    assert [f["event"] for f in frames][-3:] == ["metrics", "checkpoint", "status"]
    assert time.monotonic() - started >= 0.5


def test_health(client, settings, project_key):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    broken = settings.model_copy(update={"celery_broker_url": "redis://127.0.0.1:1/0",
                                         "database_url": "postgresql+psycopg://nobody@127.0.0.1:1/none"})
    with TestClient(create_app(broken), headers={"Authorization": f"Bearer {project_key}"}) as bad:
        r = bad.get("/readyz")
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert r.json()["checks"]["database"].startswith("unreachable")
        assert r.json()["checks"]["broker"].startswith("unreachable")
        r = bad.get("/v1/jobs")
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"


def test_unknown_route_and_method_use_the_envelope(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.put("/v1/jobs")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
